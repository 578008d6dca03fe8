"""The store against a real Valkey: concurrent saves, the script cache, and the tracked read
cache (invalidations, restarts, a worker reading its own save, its bound in bytes, transient
error replies).

Each "worker" is the store of an app made by ``create_app`` in this process, wired as in
gunicorn. The save script's limits and refusals on fakeredis: tests/unit/test_store.py.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest
import redis

from app import create_app
from app.store import SessionStore, session_key
from localservers.waits import wait_until
from tests.support import command_calls

from .faults import busy_script, stalled

SID = "s" * 43
STARTED = {"started": "2026-12-06T10:00:00+00:00"}


@pytest.fixture
def worker(settings, valkey):
    """A worker's store (a new one per call, as each gunicorn worker has its own)."""

    def make(**changes) -> SessionStore:
        options = {"redis_port": valkey.port, "redis_client_cache": True, **changes}
        return create_app(replace(settings, **options)).session_interface.store

    return make


@pytest.fixture
def no_expiry(monkeypatch):
    """Cached reads never age out: a new value can then only come from an invalidation."""
    monkeypatch.setattr("app.read_cache.MAX_AGE_SECONDS", 3600.0)


def listed(store: SessionStore, sid: str = SID) -> list[str]:
    stored = store.load(sid)
    return [] if stored is None else list(stored.messages)


def test_concurrent_saves_on_a_real_server_lose_nothing(worker):
    store = worker(messages_max_per_session=1000)
    store.save(SID, "seed", "seed", STARTED)
    texts = [f"message {i}" for i in range(200)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda t: store.save(SID, t, f"id {t}", None), texts))
    stored = listed(worker())
    assert len(stored) == 201
    assert sorted(stored[1:]) == sorted(texts)


def test_a_cached_session_costs_no_command(worker, valkey):
    store = worker()
    store.save(SID, "m1", "a", STARTED)
    reader = worker()
    admin = valkey.client()
    hgetalls = command_calls(admin, "hgetall")
    # Found on a read without tracking (app/read_cache.py), then read again tracked, and cached.
    assert listed(reader) == ["m1"]
    assert command_calls(admin, "hgetall") == hgetalls + 2
    before = command_calls(admin, "hgetall"), command_calls(admin, "evalsha")
    for _ in range(20):
        assert listed(reader) == ["m1"]
    assert (command_calls(admin, "hgetall"), command_calls(admin, "evalsha")) == before


def test_a_change_by_another_worker_reaches_the_cache(worker, no_expiry):
    writer, reader = worker(), worker()
    writer.save(SID, "m1", "a", STARTED)
    assert listed(reader) == ["m1"]
    writer.save(SID, "m2", "b", None)
    # Redis pushes the invalidation in the same event-loop turn as its reply to the writer;
    # the poll absorbs the microseconds between the two. The cache never ages out here, so
    # only the invalidation can bring the new value.
    wait_until(lambda: listed(reader) == ["m1", "m2"], 30, "the invalidation")
    writer.delete(SID)
    wait_until(lambda: listed(reader) == [], 30, "the invalidation")


def test_a_worker_reads_its_own_saves_without_asking_redis(worker, valkey, no_expiry):
    store = worker()
    store.save(SID, "m1", "a", STARTED)
    admin = valkey.client()
    hgetalls = command_calls(admin, "hgetall")
    for number in range(2, 30):
        store.save(SID, f"m{number}", f"id{number}", None)
        assert listed(store)[-1] == f"m{number}"
    # The save script's answer keeps the worker's copy current: no read of every message.
    assert command_calls(admin, "hgetall") == hgetalls
    assert listed(store) == [f"m{n}" for n in range(1, 30)]


def test_after_its_own_save_a_worker_still_hears_of_other_changes(worker, no_expiry):
    """A write ends Redis' tracking of a key for the connection that wrote it: the save script
    reads the key again last, or another worker's later save would never reach this cache."""
    mine, other = worker(), worker()
    mine.save(SID, "m1", "a", STARTED)
    assert listed(mine) == ["m1"]
    mine.save(SID, "m2", "b", None)
    assert listed(mine) == ["m1", "m2"]  # patched, from the cache
    other.save(SID, "m3", "c", None)
    wait_until(lambda: listed(mine) == ["m1", "m2", "m3"], 30, "the other worker's save")


def test_the_cache_forgets_everything_when_redis_restarts(worker, valkey):
    store, writer = worker(), worker()
    writer.save(SID, "m1", "a", STARTED)
    assert listed(store) == ["m1"]
    valkey.stop()
    with pytest.raises(redis.ConnectionError):
        store.load(SID)
    valkey.start()
    # Changed while this worker was cut off: no invalidation reached it.
    valkey.client().delete(session_key(SID))
    writer.save(SID, "new", "b", STARTED)
    wait_until(lambda: _loads(store) == ["new"], 10, "the worker's cool-down to pass")


def _loads(store: SessionStore) -> list[str] | None:
    try:
        return listed(store)
    except redis.ConnectionError:
        return None  # still cooling down


def test_bytes_that_are_not_utf8_do_not_break_the_cache(worker, valkey, no_expiry):
    store = worker()
    store.save(SID, "m1", "a", STARTED)
    valkey.client().hset(session_key(SID), "doc", b"\x80\x04\x95 a pickle, say")
    wait_until(lambda: store.load(SID) is None, 30, "the invalidation")
    valkey.client().hset(session_key(SID), "doc", b"{}")
    # The connection is still usable and still tracked.
    wait_until(lambda: listed(store) == ["m1"], 30, "the invalidation")


def test_a_script_cache_emptied_by_a_restart_is_loaded_again(worker, valkey):
    store = worker()
    store.save(SID, "before", "a", STARTED)
    valkey.client().script_flush()
    store.save(SID, "after", "b", None)
    assert listed(store) == ["before", "after"]


def test_the_cache_holds_at_most_its_bytes(worker):
    """However many sessions a worker reads, its cache keeps at most READ_CACHE_MAX_BYTES."""
    store = worker(read_cache_max_bytes=1 << 20, message_max_length=2000)
    cache = store.redis.cache
    for i in range(60):  # 60 sessions of ~40 KB: 2.4 MB read, through a 1 MiB cache
        sid = f"{i:043d}"
        store.save(sid, "x" * 2000, "a", STARTED)
        for n in range(19):
            store.save(sid, "y" * 2000, f"b{n}", None)
        assert len(listed(store, sid)) == 20
        assert cache.bytes <= 1 << 20
    assert 0 < len(cache) < 60


def test_a_busy_script_does_not_switch_the_cache_or_the_role_watch_off(worker, valkey, caplog):
    """BUSY replies (a long script) are trouble of the moment: neither CLIENT TRACKING nor ROLE
    is taken as refused, and both are used again once the script ends."""
    store = worker()
    store.save(SID, "m1", "a", STARTED)
    admin = valkey.client()
    with busy_script(valkey, seconds=3):
        # The worker's connection breaks meanwhile (a timeout), so it must connect anew and
        # ask CLIENT TRACKING and ROLE of a server that answers BUSY.
        store.redis.reset()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _busy_answer(store):
            time.sleep(0.2)
    wait_until(lambda: _loads(store) == ["m1"], 15, "the session to be read again")
    hgetalls, roles = command_calls(admin, "hgetall"), command_calls(admin, "role")
    for _ in range(50):
        assert listed(store) == ["m1"]
    assert command_calls(admin, "hgetall") == hgetalls  # cached again
    wait_until(
        lambda: listed(store) == ["m1"] and command_calls(admin, "role") > roles, 5, "a ROLE"
    )
    assert "refuses" not in caplog.text


def _busy_answer(store: SessionStore) -> bool:
    try:
        store.load(SID)
    except redis.ResponseError as exc:
        return "BUSY" in str(exc)
    except redis.ConnectionError:
        return True  # cooling down after a timeout
    return False


def test_a_save_id_stores_its_text_once_and_edited_text_anew(worker):
    """On the real server's Lua: the same form sent again is stored once; its text edited (a
    refused form shown again keeps its save id) is another message."""
    store = worker()
    assert store.save(SID, "hi", "form-1", STARTED) == 1
    assert store.save(SID, "hi", "form-1", None) == 1
    assert store.saved(SID, "form-1", "hi") == 1
    assert store.save(SID, "hi, edited", "form-1", None) == 2
    assert store.saved(SID, "form-1", "hi, edited") == 2
    assert store.saved(SID, "form-1", "hi") is None
    assert store.saved(SID, "form-2", "hi") is None
    assert listed(store) == ["hi", "hi, edited"]


def test_a_connection_dropped_by_a_timeout_takes_the_cached_copies_with_it(
    worker, valkey, no_expiry
):
    """A command that times out makes redis-py close the session connection itself, which no
    invalidation can reach any more: what was cached through it must go too. Here the server
    refuses ROLE (an ACL), so no role check reconnects, and so clears the cache, by chance."""
    valkey.client().execute_command("ACL", "SETUSER", "default", "-role")
    reader, writer = worker(), worker()
    writer.save(SID, "m1", "a", STARTED)
    assert listed(reader) == ["m1"]
    with stalled(valkey, 0.8), pytest.raises(redis.RedisError):
        reader.save(SID, "lost?", "b", None)  # times out; the script may still run later
    writer.save(SID, "m2", "c", None)  # reaches no connection of the reader's
    # The readiness probe's PING (the pooled connection) ends the cool-down: no trial read.
    wait_until(lambda: _answers(reader), 15, "the cool-down to pass")
    assert listed(reader) == ["m1", "m2"]


def _answers(store: SessionStore) -> bool:
    try:
        return bool(store.redis.ping())
    except redis.ConnectionError:
        return False


def test_a_server_refusing_client_caching_ends_tracking_instead_of_tracking_every_id(
    worker, valkey, caplog
):
    """An ACL that allows CLIENT TRACKING but not CLIENT CACHING: each read of a key the worker
    has not found stored was still tracked, so made-up session ids cost Redis memory again
    (found by review: 150 page views, 150 tracking-table entries) with nothing logged. Now the
    refusal is named once, and the worker's connection stops tracking."""
    valkey.client().execute_command("ACL", "SETUSER", "default", "-client|caching")
    store = worker()
    store.save(SID, "m1", "a", STARTED)

    def tracked() -> int:
        return int(valkey.client().info("stats")["tracking_total_keys"])

    with caplog.at_level("WARNING", logger="app.nodes"):
        for number in range(50):
            assert store.load(f"{number:043d}") is None
    assert tracked() <= 2
    refusals = [r.getMessage() for r in caplog.records if "CLIENT CACHING" in r.getMessage()]
    assert len(refusals) == 1, refusals
    assert listed(store) == ["m1"]
