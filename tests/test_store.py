"""The Redis side: the append script, and the tracked read cache against a real Valkey."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest
import redis

from app.store import DirectReads, MessageStore, SessionFull, SessionGone, TrackedReads, connect

from .support import wait_until


@pytest.fixture
def real_settings(settings, valkey):
    return replace(settings, redis_port=valkey.port)


@pytest.fixture
def no_expiry(monkeypatch):
    """Cached reads never age out: a new value can then only come from an invalidation."""
    monkeypatch.setattr("app.store.CACHE_MAX_AGE_SECONDS", 3600.0)


def seen(reads: TrackedReads, key: str) -> list[str]:
    """What a request opening its session now would read: sync, then read."""
    reads.sync()
    return reads.lrange(key)


def calls(client: redis.Redis, command: str) -> int:
    return client.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0)


def test_append_creates_the_session_with_its_first_message(fake_redis):
    store = MessageStore(fake_redis, DirectReads(fake_redis))
    count = store.append("session:a", "hi", limit=5, ttl_seconds=60, document=b"{}")
    assert count == 1
    assert fake_redis.get("session:a") == b"{}"
    assert store.messages("session:a") == ["hi"]
    assert 0 < fake_redis.ttl("session:a:messages") <= 60


def test_append_refuses_over_the_limit_and_keeps_what_is_there(fake_redis):
    store = MessageStore(fake_redis, DirectReads(fake_redis))
    store.append("session:a", "1", limit=2, ttl_seconds=60, document=b"{}")
    store.append("session:a", "2", limit=2, ttl_seconds=60, document=None)
    with pytest.raises(SessionFull):
        store.append("session:a", "3", limit=2, ttl_seconds=60, document=None)
    assert store.messages("session:a") == ["1", "2"]


def test_append_to_a_gone_session_is_refused_and_creates_nothing(fake_redis):
    store = MessageStore(fake_redis, DirectReads(fake_redis))
    with pytest.raises(SessionGone):
        store.append("session:gone", "x", limit=2, ttl_seconds=60, document=None)
    assert fake_redis.keys("*") == []


def test_delete_removes_both_keys(fake_redis):
    store = MessageStore(fake_redis, DirectReads(fake_redis))
    store.append("session:a", "1", limit=2, ttl_seconds=60, document=b"{}")
    store.delete("session:a")
    assert fake_redis.keys("*") == []


def test_concurrent_appends_on_a_real_server_lose_nothing(real_settings, valkey):
    client = connect(real_settings)
    store = MessageStore(client, DirectReads(client))
    store.append("session:c", "seed", limit=1000, ttl_seconds=60, document=b"{}")
    texts = [f"message {i}" for i in range(200)]
    with ThreadPoolExecutor(16) as pool:
        list(
            pool.map(
                lambda t: store.append("session:c", t, limit=1000, ttl_seconds=60, document=None),
                texts,
            )
        )
    stored = store.messages("session:c")
    assert len(stored) == 201
    assert sorted(stored[1:]) == sorted(texts)


def test_tracked_reads_cost_no_command_once_cached(real_settings, valkey):
    admin = valkey.client()
    admin.set("session:t", b"{}")
    admin.rpush("session:t:messages", b"m1")
    reads = TrackedReads(real_settings)
    assert reads.get("session:t") == "{}"
    assert reads.lrange("session:t:messages") == ["m1"]
    gets, lranges = calls(admin, "get"), calls(admin, "lrange")
    for _ in range(20):
        assert reads.get("session:t") == "{}"
        assert reads.lrange("session:t:messages") == ["m1"]
    assert (calls(admin, "get"), calls(admin, "lrange")) == (gets, lranges)


def test_tracked_reads_see_a_change_made_by_another_client(real_settings, valkey, no_expiry):
    admin = valkey.client()
    admin.rpush("session:t:messages", b"m1")
    reads = TrackedReads(real_settings)
    other = TrackedReads(real_settings)  # another replica
    assert reads.lrange("session:t:messages") == ["m1"]
    assert other.lrange("session:t:messages") == ["m1"]
    admin.rpush("session:t:messages", b"m2")
    # Redis pushes the invalidation in the same event-loop turn as its reply to the writer;
    # the poll absorbs the microseconds between the two. The cache never ages out here, so
    # only the invalidation can bring the new value.
    wait_until(lambda: seen(reads, "session:t:messages") == ["m1", "m2"], 30, "invalidation")
    admin.delete("session:t:messages")
    wait_until(lambda: seen(other, "session:t:messages") == [], 30, "invalidation")


def test_tracked_reads_forget_everything_when_redis_restarts(real_settings, valkey):
    admin = valkey.client()
    admin.set("session:t", b"v1")
    reads = TrackedReads(real_settings)
    assert reads.get("session:t") == "v1"
    valkey.stop()
    reads.sync()  # finds the connection closed and forgets what it cached
    with pytest.raises(redis.ConnectionError):
        reads.get("session:t")
    valkey.start()
    valkey.client().set("session:t", b"v2")  # changed while this client was cut off
    assert reads.get("session:t") == "v2"


def test_ping_reports_reachability(real_settings, valkey):
    client = connect(real_settings)
    store = MessageStore(client, DirectReads(client))
    assert store.ping() is True
    valkey.stop()
    assert store.ping() is False


def test_bytes_that_are_not_utf8_do_not_break_tracked_reads(real_settings, valkey, no_expiry):
    valkey.client().set("session:p", b"\x80\x04\x95 a pickle, say")
    reads = TrackedReads(real_settings)
    assert reads.get("session:p").startswith("\ufffd")
    valkey.client().set("session:p", b"{}")
    # The connection is still usable and still tracked.
    wait_until(lambda: (reads.sync(), reads.get("session:p"))[1] == "{}", 30, "invalidation")
