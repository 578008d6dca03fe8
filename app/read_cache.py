"""The per-worker cache of sessions as last read from Redis, bounded in bytes and in age.

A page view of an unchanged session is answered from here without a round trip to Redis; Redis
keeps it fresh by pushing an invalidation for every key this worker has read (``CLIENT
TRACKING``, see app/nodes.py). The cache holds what it costs: each entry is sized by the strings
it keeps, and the total stays under READ_CACHE_MAX_BYTES, the least recently used sessions going
first, so however many sessions (or how large) a worker serves, its memory stays bounded. An
entry older than MAX_AGE_SECONDS is read again even without an invalidation (a silently broken
connection sends none) and leaves memory at the next request.

The bounds are cachetools' ``TTLCache`` with a ``getsizeof``: least recently used first, by
size, with an age limit.

Only keys this worker has found stored are tracked (``known``): Valkey remembers every key a
tracking connection reads, one that does not exist too, and that memory counts against
``maxmemory``, so page views with made-up session ids, sent by the thousand, would fill it and,
with memory short, have real sessions evicted to make room. So a key not known yet is read on
the same connection with tracking turned off for that command (app/nodes.py); once found, it
is read again at once, tracked, and that copy is cached (a copy from a read made before
tracking began could miss a change made in between). Saves likewise turn it off but for a key
known here or a session they create.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, replace
from typing import Any

from cachetools import TTLCache

from . import metrics
from .lru import LRU

# A cached read older than this is fetched again even without an invalidation, so a silently
# broken connection (no FIN, so no invalidations either) cannot serve stale data for long.
MAX_AGE_SECONDS = 10.0
# What an entry costs besides its strings: the entry and its tuple, the cache's key, link and
# size records, the dictionary slots. Measured with tracemalloc for a one-message session.
_ENTRY_OVERHEAD = 600
_POINTER = 8
# Keys found stored that a worker remembers: each costs some 200 bytes, so at most 4 MB.
_KNOWN_KEYS = 20_000


@dataclass(frozen=True)
class StoredSession:
    """A session as stored: its document (what the app keeps besides messages: when it
    started), decoded, and its messages, oldest first."""

    data: dict[str, Any]
    messages: tuple[str, ...]
    document_size: int  # bytes of the document as stored, for the cache's bound


@dataclass(frozen=True)
class _Entry:
    node: str  # the node it was read from: a read now routed elsewhere does not use it
    session: StoredSession
    size: int  # bytes, as counted against the cache's bound


def _size(session: StoredSession) -> int:
    # The decoded document takes a few times its JSON: a small dict and its strings.
    document = sys.getsizeof(session.data) + 4 * session.document_size
    strings = sum(sys.getsizeof(m) for m in session.messages)
    return _ENTRY_OVERHEAD + document + strings + _POINTER * len(session.messages)


class ReadCache:
    """Sessions by key; every method is safe to call from any thread."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: TTLCache[str, _Entry] = TTLCache(
            maxsize=max_bytes,
            ttl=MAX_AGE_SECONDS,
            timer=time.monotonic,
            getsizeof=lambda entry: entry.size,
        )
        self._lock = threading.Lock()
        self._known: LRU[str, bool] = LRU(_KNOWN_KEYS)

    def get(self, key: str, node: str, at_least: int = 0) -> StoredSession | None:
        """The cached session, unless it holds fewer than ``at_least`` messages (the browser
        saw a save the invalidation of which has not arrived yet: read it again)."""
        with self._lock:
            entry = self._entries.get(key)
        if entry is None or entry.node != node or len(entry.session.messages) < at_least:
            metrics.READ_CACHE_MISSES.inc()
            return None
        metrics.READ_CACHE_HITS.inc()
        return entry.session

    def known(self, key: str) -> bool:
        """Whether this worker has found the session at ``key`` stored (then its reads are
        tracked and cached; until then, they are neither). A cached session is known, whatever
        the known keys' own bound forgot: a command on it sent untracked would end Redis'
        tracking of a key whose copy is still here."""
        with self._lock:
            return key in self._entries or self._known.get(key) is not None

    def found(self, key: str) -> None:
        """The session at ``key`` is stored: its next read is tracked."""
        with self._lock:
            self._known.put(key, True)

    def put(self, key: str, node: str, session: StoredSession) -> None:
        self.found(key)
        entry = _Entry(node, session, _size(session))
        with self._lock:
            if entry.size > self.max_bytes:
                self._entries.pop(key, None)  # larger than the whole cache: never kept
            else:
                self._entries[key] = entry

    def appended(self, key: str, node: str, number: int, text: str) -> None:
        """This worker stored message ``number`` of the session at ``key``: keep its entry
        current if it held the ``number - 1`` before, so the next page needs no read."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry.node != node:
                return
            messages = entry.session.messages
            if len(messages) != number - 1:
                del self._entries[key]  # not the state this save followed: read it again
                return
            session = replace(entry.session, messages=(*messages, text))
            size = entry.size + sys.getsizeof(text) + _POINTER
            if size > self.max_bytes:
                del self._entries[key]
            else:
                self._entries[key] = _Entry(node, session, size)

    def discard(self, key: str) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def expire(self) -> None:
        """Let entries past their age leave memory (called before each read)."""
        with self._lock:
            self._entries.expire()

    @property
    def bytes(self) -> int:
        return int(self._entries.currsize)

    def __len__(self) -> int:
        return len(self._entries)
