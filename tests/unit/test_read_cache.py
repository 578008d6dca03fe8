"""The read cache's bounds (app/read_cache.py): bytes, least recently used first, age; and how
a worker's own save keeps an entry current."""

from __future__ import annotations

from app import read_cache
from app.read_cache import ReadCache, StoredSession

MB = 1 << 20


def session(messages: int, length: int = 1000) -> StoredSession:
    return StoredSession({"started": "now"}, tuple("x" * length for _ in range(messages)), 20)


def test_the_bytes_held_stay_under_the_bound_least_recently_used_first():
    cache = ReadCache(MB)
    for i in range(100):  # ~100 KB each: ten times the bound in all
        cache.put(f"k{i}", "n", session(100))
        cache.get("k0", "n")  # read again and again: kept
        assert cache.bytes <= MB
    assert cache.get("k0", "n") is not None
    assert cache.get("k1", "n") is None  # the least recently used went first
    assert 5 < len(cache) < 12


def test_a_session_larger_than_the_whole_cache_is_never_kept():
    cache = ReadCache(MB)
    cache.put("big", "n", session(1100))
    assert cache.get("big", "n") is None
    assert cache.bytes == 0


def test_entries_past_their_age_leave_memory(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(read_cache.time, "monotonic", lambda: now[0])
    cache = ReadCache(MB)
    cache.put("k", "n", session(10))
    now[0] += read_cache.MAX_AGE_SECONDS
    assert cache.get("k", "n") is None
    cache.expire()
    assert len(cache) == 0 and cache.bytes == 0


def test_an_entry_read_from_another_node_is_not_used():
    cache = ReadCache(MB)
    cache.put("k", "node-a", session(1))
    assert cache.get("k", "node-b") is None  # the slot moved: read it where it lives now


def test_a_save_patches_the_entry_it_follows_and_drops_one_it_does_not():
    cache = ReadCache(MB)
    cache.put("k", "n", session(2))
    before = cache.bytes
    cache.appended("k", "n", 3, "third")
    patched = cache.get("k", "n")
    assert patched is not None and patched.messages[-1] == "third"
    assert cache.bytes > before
    cache.appended("k", "n", 5, "fifth")  # number 4 was saved elsewhere: this copy is stale
    assert cache.get("k", "n") is None


def test_a_copy_with_fewer_messages_than_the_browser_saw_saved_is_not_used():
    cache = ReadCache(MB)
    cache.put("k", "n", session(3))
    assert cache.get("k", "n", at_least=3) is not None
    assert cache.get("k", "n", at_least=4) is None  # saved elsewhere, not yet invalidated here


def test_a_key_is_known_once_found_or_cached():
    cache = ReadCache(max_bytes=1 << 20)
    assert not cache.known("k")
    cache.found("k")
    assert cache.known("k")
    cache.put("j", "n", StoredSession({}, ("m",), 2))
    assert cache.known("j")
    cache.clear()  # a reconnect drops the copies, not what is known to be stored
    assert cache.known("j") and cache.get("j", "n") is None


def test_a_cached_session_stays_known_whatever_the_known_keys_forgot(monkeypatch):
    """A command on a cached session sent untracked would end Redis' tracking of it while its
    copy stays here, never invalidated (found by review)."""
    monkeypatch.setattr(read_cache, "_KNOWN_KEYS", 2)
    cache = ReadCache(max_bytes=1 << 20)
    cache.put("s", "n", StoredSession({}, ("m",), 2))
    cache.found("a")
    cache.found("b")  # "s" has left the known keys' own memory
    assert cache.known("s")
