"""The message store on fakeredis: the save script's limits, save ids and refusals.

The same store and the tracked read cache against a real Valkey: tests/system/test_store.py.
"""

from __future__ import annotations

import pytest

from app.reads import DirectReads
from app.store import MessageStore, SessionFull, SessionGone, SessionOverBudget, session_key

KEY = session_key("a")


def append(store: MessageStore, text: str, save_id: str | None = None, **options) -> int:
    options = {"limit": 5, "max_bytes": 1000, "ttl_seconds": 60, "document": None, **options}
    return store.append(KEY, text, save_id=save_id or f"id-of-{text}", **options)


def test_append_creates_the_session_with_its_first_message(fake_redis):
    store = MessageStore(fake_redis, DirectReads(fake_redis))
    assert append(store, "hi", document=b"{}") == 1
    assert fake_redis.hget(KEY, "doc") == b"{}"
    assert store.messages(KEY) == ["hi"]
    assert 0 < fake_redis.ttl(KEY) <= 60
    assert fake_redis.keys("*") == [KEY.encode()]  # one key: one eviction unit


def test_the_same_save_id_stores_once(fake_redis):
    store = MessageStore(fake_redis, DirectReads(fake_redis))
    assert append(store, "hi", "form-1", document=b"{}") == 1
    assert append(store, "hi", "form-1") == 1  # re-sent: answered as stored, not stored again
    assert append(store, "hi", "form-2") == 2  # another form: another message
    assert store.messages(KEY) == ["hi", "hi"]


def test_append_refuses_over_the_limit_and_keeps_what_is_there(fake_redis):
    store = MessageStore(fake_redis, DirectReads(fake_redis))
    append(store, "1", limit=2, document=b"{}")
    append(store, "2", limit=2)
    with pytest.raises(SessionFull):
        append(store, "3", limit=2)
    assert store.messages(KEY) == ["1", "2"]


def test_append_refuses_over_the_byte_budget_and_keeps_what_is_there(fake_redis):
    store = MessageStore(fake_redis, DirectReads(fake_redis))
    append(store, "é" * 4, max_bytes=10, document=b"{}")  # 8 bytes
    with pytest.raises(SessionOverBudget):
        append(store, "abc", max_bytes=10)
    append(store, "ab", max_bytes=10)
    assert store.messages(KEY) == ["éééé", "ab"]


def test_append_to_a_gone_session_is_refused_and_creates_nothing(fake_redis):
    store = MessageStore(fake_redis, DirectReads(fake_redis))
    with pytest.raises(SessionGone):
        append(store, "x")
    assert fake_redis.keys("*") == []


def test_delete_removes_the_session(fake_redis):
    store = MessageStore(fake_redis, DirectReads(fake_redis))
    append(store, "1", document=b"{}")
    store.delete(KEY)
    assert fake_redis.keys("*") == []


def test_a_server_that_refuses_wait_is_noted_once_and_saves_go_on(fake_redis, caplog):
    # fakeredis knows no WAIT, as some managed services do not.
    store = MessageStore(fake_redis, DirectReads(fake_redis), wait_replicas="on")
    for number in range(1, 4):
        assert append(store, f"m{number}", document=b"{}" if number == 1 else None) == number
    assert store.messages(KEY) == ["m1", "m2", "m3"]
    refusals = [r for r in caplog.records if "refuses WAIT" in r.getMessage()]
    assert len(refusals) == 1
