"""The store against a real Valkey: concurrent saves, the script cache, and the tracked read
cache (invalidations, restarts, a worker reading its own save).

The save script's limits and refusals on fakeredis: tests/unit/test_store.py.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest
import redis

from app.connection import connect
from app.reads import DirectReads, TrackedReads
from app.store import MessageStore, session_key
from localservers.waits import wait_until

KEY = session_key("a")


@pytest.fixture
def real_settings(settings, valkey):
    return replace(settings, redis_port=valkey.port)


@pytest.fixture
def no_expiry(monkeypatch):
    """Cached reads never age out: a new value can then only come from an invalidation."""
    monkeypatch.setattr("app.reads.CACHE_MAX_AGE_SECONDS", 3600.0)


def seen(reads: TrackedReads, key: str) -> dict[str, str]:
    """What a request opening its session now would read: sync, then read."""
    reads.sync()
    return reads.fields(key)


def calls(client: redis.Redis, command: str) -> int:
    return client.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0)


def append(store: MessageStore, text: str, save_id: str | None = None, **options) -> int:
    options = {"limit": 5, "max_bytes": 1000, "ttl_seconds": 60, "document": None, **options}
    return store.append(KEY, text, save_id=save_id or f"id-of-{text}", **options)


def test_concurrent_appends_on_a_real_server_lose_nothing(real_settings, valkey):
    client = connect(real_settings)
    store = MessageStore(client, DirectReads(client))
    append(store, "seed", limit=1000, max_bytes=10**6, document=b"{}")
    texts = [f"message {i}" for i in range(200)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda t: append(store, t, limit=1000, max_bytes=10**6), texts))
    stored = store.messages(KEY)
    assert len(stored) == 201
    assert sorted(stored[1:]) == sorted(texts)


def test_tracked_reads_cost_no_command_once_cached(real_settings, valkey):
    admin = valkey.client()
    admin.hset(session_key("t"), mapping={"doc": b"{}", "n": 1, "m:1": b"m1"})
    reads = TrackedReads(real_settings)
    assert reads.fields(session_key("t")) == {"doc": "{}", "n": "1", "m:1": "m1"}
    hgetalls = calls(admin, "hgetall")
    for _ in range(20):
        assert reads.fields(session_key("t"))["m:1"] == "m1"
    assert calls(admin, "hgetall") == hgetalls


def test_tracked_reads_see_a_change_made_by_another_client(real_settings, valkey, no_expiry):
    admin = valkey.client()
    admin.hset(session_key("t"), "m:1", b"m1")
    reads = TrackedReads(real_settings)
    other = TrackedReads(real_settings)  # another replica
    assert reads.fields(session_key("t")) == {"m:1": "m1"}
    assert other.fields(session_key("t")) == {"m:1": "m1"}
    admin.hset(session_key("t"), "m:2", b"m2")
    # Redis pushes the invalidation in the same event-loop turn as its reply to the writer;
    # the poll absorbs the microseconds between the two. The cache never ages out here, so
    # only the invalidation can bring the new value.
    wait_until(lambda: len(seen(reads, session_key("t"))) == 2, 30, "invalidation")
    admin.delete(session_key("t"))
    wait_until(lambda: seen(other, session_key("t")) == {}, 30, "invalidation")


def test_tracked_reads_forget_everything_when_redis_restarts(real_settings, valkey):
    admin = valkey.client()
    admin.hset(session_key("t"), "doc", b"v1")
    reads = TrackedReads(real_settings)
    assert reads.fields(session_key("t")) == {"doc": "v1"}
    valkey.stop()
    reads.sync()  # finds the connection closed and forgets what it cached
    with pytest.raises(redis.ConnectionError):
        reads.fields(session_key("t"))
    valkey.start()
    valkey.client().hset(session_key("t"), "doc", b"v2")  # changed while this client was cut off
    assert reads.fields(session_key("t")) == {"doc": "v2"}


def test_ping_reports_reachability(real_settings, valkey):
    client = connect(real_settings)
    store = MessageStore(client, DirectReads(client))
    assert store.ping() is True
    valkey.stop()
    assert store.ping() is False


def test_bytes_that_are_not_utf8_do_not_break_tracked_reads(real_settings, valkey, no_expiry):
    valkey.client().hset(session_key("p"), "doc", b"\x80\x04\x95 a pickle, say")
    reads = TrackedReads(real_settings)
    assert reads.fields(session_key("p"))["doc"].startswith("\ufffd")
    valkey.client().hset(session_key("p"), "doc", b"{}")
    # The connection is still usable and still tracked.
    wait_until(lambda: seen(reads, session_key("p")) == {"doc": "{}"}, 30, "invalidation")


def test_a_script_cache_emptied_by_a_restart_is_loaded_again(real_settings, valkey):
    client = connect(real_settings)
    store = MessageStore(client, DirectReads(client))
    append(store, "before", document=b"{}")
    valkey.client().script_flush()
    append(store, "after")
    assert store.messages(KEY) == ["before", "after"]


def test_a_worker_reads_its_own_save_at_once(real_settings, valkey):
    reads = TrackedReads(real_settings)
    store = MessageStore(connect(real_settings), reads)
    append(store, "first", document=b"{}", limit=100)
    assert store.load(KEY).messages == ["first"]  # cached now
    # The invalidation Redis pushes for the next save may arrive after the next request began:
    # the worker that saved must not depend on it.
    for number in range(2, 30):
        append(store, f"m{number}", limit=100)
        assert store.load(KEY).messages[-1] == f"m{number}"
