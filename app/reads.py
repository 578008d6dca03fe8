"""Reading a session's hash: straight from Redis, or from a per-process cache kept fresh by Redis.

Both follow a failover: each asks its node's role at most once a second (connection.RoleWatch)
and reconnects through the endpoint when the node was demoted, since a demoted primary keeps
its client connections and serves stale data until it has resynced.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import metrics
from .config import Settings
from .connection import Client, RoleWatch, connect, disconnect
from .lru import LRU

log = logging.getLogger(__name__)

# A cached read older than this is fetched again even without an invalidation, so a silently
# broken connection (no FIN, so no invalidations either) cannot serve stale data for long.
CACHE_MAX_AGE_SECONDS = 10.0
CACHE_MAX_ENTRIES = 20_000


class Reads(Protocol):
    def sync(self) -> None:
        """Bring what this process knows up to date; called when a request opens its session."""

    def fields(self, key: str) -> dict[str, str]:
        """Every field of the hash at ``key`` (empty when there is none). Do not change it."""

    def forget(self, key: str) -> None:
        """This process has just changed ``key``: its next read must ask Redis."""

    def reset(self) -> None:
        """Forget every connection and cached value (the node behind them was demoted)."""


def _decode(value: bytes | str) -> str:
    # Bytes that are not UTF-8 (never written by this app) must not break a page: they decode
    # to U+FFFD, and a session document then fails as JSON and is ignored.
    return value.decode(errors="replace") if isinstance(value, bytes) else value


class DirectReads:
    """Reads that always go to Redis: used with fakeredis, on a cluster, and when
    REDIS_CLIENT_CACHE=false."""

    def __init__(self, client: Client, cluster: bool = False) -> None:
        self.client = client
        self._role = RoleWatch(enabled=not cluster)

    def sync(self) -> None:
        if self._role.demoted(self.client):
            self.reset()

    def fields(self, key: str) -> dict[str, str]:
        fields = metrics.time_read(self.client.hgetall, key)
        return {_decode(k): _decode(v) for k, v in fields.items()}

    def forget(self, key: str) -> None:
        """Nothing cached: every read asks Redis."""

    def reset(self) -> None:
        disconnect(self.client)
        self._role.due_now()


class TrackedReads:
    """A per-process cache of session reads, kept fresh by Redis server-assisted invalidation.

    A page view of an unchanged session then costs no round trip to Redis: the connection
    runs RESP3 ``CLIENT TRACKING ON`` and Redis pushes an invalidation for every key this
    process has read as soon as any client (another replica included) changes it. ``sync``
    drains the pending pushes; the session interface calls it when a request opens its
    session, so every request reads the cache as it stood when the request began.

    Hand-written instead of redis-py's ``cache_config`` because redis-py refuses caching
    unless the server reports itself as Redis 7.4 or later, which excludes Valkey and every
    ElastiCache Redis OSS engine, and because its hit path (locks, deep copies, metrics)
    measured as slow here as a loopback round trip.

    Where the server refuses ``CLIENT TRACKING`` (a managed service may), it says so once in
    the log and reads every page from Redis instead. On a cluster it is not used at all
    (see app._make_store): tracking is per node, and following it through resharding and
    failovers is more than a saved round trip is worth.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._cache: LRU[str, tuple[float, dict[str, str]]] = LRU(CACHE_MAX_ENTRIES)
        self._lock = threading.Lock()
        self._client: redis.Redis | None = None
        self._role = RoleWatch()
        self._tracking = True  # until the server refuses it

    def fields(self, key: str) -> dict[str, str]:
        with self._lock:
            entry = self._cache.get(key)
            now = time.monotonic()
            if entry is not None and now - entry[0] < CACHE_MAX_AGE_SECONDS:
                metrics.READ_CACHE_HITS.inc()
                return entry[1]
            metrics.READ_CACHE_MISSES.inc()
            # Any invalidation that reaches us while this read is in flight is processed
            # by the parser before the reply, so the value stored below is never stale.
            value = metrics.time_read(self._connected().hgetall, key)
            if value and self._tracking:
                self._cache.put(key, (now, value))
            else:
                # Nothing is cached for a missing key: the next read asks Redis again.
                self._cache.pop(key, None)
            return value

    def _connected(self) -> redis.Redis:
        # Made on first use: a single-connection client connects when it is built, and a
        # worker must be able to start (and answer 503s) while Redis is away.
        if self._client is None:
            self._client = connect(
                self._settings,
                protocol=3,
                decode_responses=True,
                encoding_errors="replace",  # see _decode
                single_connection_client=True,
                redis_connect_func=self._on_connect,
            )
        return self._client

    def sync(self) -> None:
        with self._lock:
            if self._drain_invalidations() and self._role.demoted(self._client):
                self._disconnect()

    def forget(self, key: str) -> None:
        # Redis pushes the invalidation too, but it may reach this process a moment after the
        # next request began: a worker must read its own writes without that race.
        with self._lock:
            self._cache.pop(key, None)

    def reset(self) -> None:
        with self._lock:
            self._disconnect()
            self._role.due_now()

    def _disconnect(self) -> None:
        self._cache.clear()
        if self._client is not None and self._client.connection is not None:
            self._client.connection.disconnect()

    def _drain_invalidations(self) -> bool:
        """Apply pending invalidations; True while the connection is up."""
        connection = self._client.connection if self._client is not None else None
        if connection is None or not connection.is_connected:
            return False  # the next read connects, through the endpoint, with an empty cache
        try:
            while connection.can_read(timeout=0):
                connection.read_response(push_request=True)
        except (RedisConnectionError, RedisTimeoutError, OSError):
            # The server went away: what we cached can no longer be kept fresh. The read
            # that follows reconnects (or fails with a clean error).
            self._disconnect()
            return False
        return True

    def _on_connect(self, connection: redis.connection.AbstractConnection) -> None:
        # No health check inside the handshake: its PING would reconnect, and so recurse,
        # once per socket timeout while a frozen server accepts connections but never answers.
        connection.on_connect_check_health(check_health=False)
        # Whatever changed while we were disconnected sent us no invalidation.
        self._cache.clear()
        set_invalidation_handler(connection, self._on_invalidation)
        if not self._tracking:
            return
        connection.send_command("CLIENT", "TRACKING", "ON", check_health=False)
        try:
            connection.read_response()
        except ResponseError as exc:
            log.warning("the server refuses CLIENT TRACKING (%s): no read cache", exc)
            self._tracking = False

    def _on_invalidation(self, message: list[Any]) -> None:
        keys = message[1]
        metrics.READ_CACHE_INVALIDATIONS.inc(1 if keys is None else len(keys))
        if keys is None:  # FLUSHALL/FLUSHDB, or the server's tracking table overflowed
            self._cache.clear()
            return
        for raw in keys:
            self._cache.pop(raw.decode() if isinstance(raw, bytes) else raw, None)


def set_invalidation_handler(
    connection: redis.connection.AbstractConnection, handler: Callable[[list[Any]], None]
) -> None:
    """Have ``handler`` called with each invalidation push the connection reads.

    redis-py 8.1 has no public API for this (its own client-side cache reaches into the
    connection's parser the same way), so this is the one place that uses the private
    ``connection._parser.set_invalidation_push_handler``; tests/unit/test_reads_seam.py fails,
    naming it, when a redis-py upgrade removes it.
    """
    connection._parser.set_invalidation_push_handler(handler)
