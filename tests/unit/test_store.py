"""The session store on fakeredis: key names, the save script's limits, save ids and refusals.

The same store and the tracked read cache against a real Valkey: tests/system/test_store.py.
"""

from __future__ import annotations

import pytest

from app.redis_client import RedisClient
from app.replication import NodeReplication, ReplicaWait
from app.store import Limits, SessionFull, SessionGone, SessionOverBudget, SessionStore
from tests.support import session_keys

SID = "a" * 43
STARTED = {"started": "2026-12-06T10:00:00+00:00"}


@pytest.fixture
def make_store(connect_fake):
    def make(messages: int = 5, max_bytes: int = 1000, wait: str = "off") -> SessionStore:
        redis_client = RedisClient(connect_fake(), connect_fake, cache=None)
        replicas = ReplicaWait(wait, 50, lambda: NodeReplication(0, "", promoted=False))
        return SessionStore(redis_client, Limits(messages, max_bytes, 60), replicas)

    return make


def messages(store: SessionStore, sid: str = SID) -> list[str]:
    stored = store.load(sid)
    return [] if stored is None else list(stored.messages)


def test_a_save_creates_the_session_with_its_first_message(make_store, fake_redis):
    store = make_store()
    assert store.save(SID, "hi", "form-1", STARTED) == 1
    (key,) = session_keys(fake_redis)
    assert fake_redis.hget(key, "doc") == b'{"started":"2026-12-06T10:00:00+00:00"}'
    assert store.load(SID).data == STARTED
    assert messages(store) == ["hi"]
    assert 0 < fake_redis.ttl(key) <= 60
    assert fake_redis.keys("*") == [key]  # one key: one eviction unit


def test_the_session_id_is_never_stored(make_store, fake_redis):
    """A key listing, a snapshot or MONITOR must not yield a live session cookie."""
    store = make_store()
    store.save(SID, "hi", "form-1", STARTED)
    store.save(SID, "again", "form-2", None)
    for key in fake_redis.keys("*"):
        assert SID.encode() not in key
        for field, value in fake_redis.hgetall(key).items():
            assert SID.encode() not in field + value


def test_the_same_save_id_stores_once(make_store):
    store = make_store()
    assert store.save(SID, "hi", "form-1", STARTED) == 1
    assert store.save(SID, "hi", "form-1", None) == 1  # re-sent: answered as stored, not again
    assert store.save(SID, "hi", "form-2", None) == 2  # another form: another message
    assert messages(store) == ["hi", "hi"]


def test_a_save_over_the_limit_is_refused_and_keeps_what_is_there(make_store):
    store = make_store(messages=2)
    store.save(SID, "1", "a", STARTED)
    store.save(SID, "2", "b", None)
    with pytest.raises(SessionFull):
        store.save(SID, "3", "c", None)
    assert messages(store) == ["1", "2"]


def test_a_save_over_the_byte_budget_is_refused_and_keeps_what_is_there(make_store):
    store = make_store(max_bytes=10)
    store.save(SID, "é" * 4, "a", STARTED)  # 8 bytes
    with pytest.raises(SessionOverBudget):
        store.save(SID, "abc", "b", None)
    store.save(SID, "ab", "c", None)
    assert messages(store) == ["éééé", "ab"]


def test_a_save_to_a_gone_session_is_refused_and_creates_nothing(make_store, fake_redis):
    store = make_store()
    with pytest.raises(SessionGone):
        store.save(SID, "x", "a", None)
    assert fake_redis.keys("*") == []


def test_a_new_session_never_takes_an_existing_id(make_store):
    store = make_store()
    store.save(SID, "mine", "a", STARTED)
    with pytest.raises(SessionGone):
        store.save(SID, "theirs", "b", {"started": "later"})
    assert messages(store) == ["mine"]
    assert store.load(SID).data == STARTED


def test_delete_removes_the_session(make_store, fake_redis):
    store = make_store()
    store.save(SID, "1", "a", STARTED)
    assert store.delete(SID) is True
    assert fake_redis.keys("*") == []
    assert store.delete(SID) is False


@pytest.mark.parametrize("document", [b"\x80\x04\x95 a pickle", b"[1, 2]", b"not json"])
def test_a_document_that_is_not_a_json_object_is_no_session(make_store, fake_redis, document):
    store = make_store()
    store.save(SID, "1", "a", STARTED)
    (key,) = session_keys(fake_redis)
    fake_redis.hset(key, "doc", document)
    assert store.load(SID) is None


def test_a_server_that_refuses_wait_is_noted_once_and_saves_go_on(make_store, caplog):
    # fakeredis knows no WAIT, as some managed services do not.
    store = make_store(wait="on")
    for number in range(1, 4):
        document = STARTED if number == 1 else None
        assert store.save(SID, f"m{number}", f"id{number}", document) == number
    assert messages(store) == ["m1", "m2", "m3"]
    refusals = [r for r in caplog.records if "refuses WAIT" in r.getMessage()]
    assert len(refusals) == 1


def test_bytes_that_are_not_utf8_are_read_as_text_and_cannot_break_a_page(make_store, fake_redis):
    store = make_store()
    store.save(SID, "héllo", "a", STARTED)
    (key,) = session_keys(fake_redis)
    fake_redis.hset(key, mapping={"m:2": b"\xff\xfe broken", "n": 2})
    assert messages(store) == ["héllo", "\ufffd\ufffd broken"]
