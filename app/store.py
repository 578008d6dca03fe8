"""Everything this app keeps in Redis: the connection, the per-session message list, the cache.

Keys of one session (``sid`` is flask-session's session id):

* ``session:<sid>``: flask-session's JSON document (when the session started), TTL = lifetime;
* ``session:<sid>:messages``: a Redis list, oldest first, same TTL.

Appending to a list makes a save atomic and O(1) whatever the session holds, where the common
pattern (read the list from the session, append, write it all back) loses concurrent saves and
grows with the session.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from . import metrics
from .config import Settings
from .lru import LRU

log = logging.getLogger(__name__)

T = TypeVar("T")

KEY_PREFIX = "session:"
MESSAGES_SUFFIX = ":messages"

# A dropped connection (ElastiCache failover, idle timeout) costs a retry, not an error page.
# Commands answer in well under a millisecond, so half a second means the server is stuck;
# redis-py retries the handshake inside each command retry, so a server that accepts
# connections but never answers costs up to (RETRIES + 1)^2 socket timeouts, ~4.5 s, before
# the first 503 (later requests then fail fast, see _fail_fast).
CONNECT_TIMEOUT_SECONDS = 1.0
SOCKET_TIMEOUT_SECONDS = 0.5
RETRIES = 2
# Below ElastiCache's idle `timeout` and any NAT idle timeout, so pooled connections are
# checked (PING) before use instead of failing mid-request.
HEALTH_CHECK_INTERVAL_SECONDS = 10
# A cached read older than this is fetched again even without an invalidation, so a silently
# broken connection (no FIN, so no invalidations either) cannot serve stale data for long.
CACHE_MAX_AGE_SECONDS = 10.0
CACHE_MAX_ENTRIES = 20_000

# One script per save, so that neither the count limit nor the order of concurrent saves can
# be raced, and a new session's document and first message appear together. ARGV[4] is the
# new session's document, or empty for an existing session: a save for a session that is
# gone (destroyed in another tab, or expired) is refused rather than resurrecting it, as
# Spring Session does. The document's TTL is extended only when it has run down by more
# than ARGV[5] seconds: an EXPIRE would invalidate every replica's cached copy of it.
_APPEND = """
if ARGV[4] == '' then
  if redis.call('EXISTS', KEYS[1]) == 0 then
    return -2
  end
elseif redis.call('SET', KEYS[1], ARGV[4], 'NX', 'EX', ARGV[3]) == false then
  return -2
end
if redis.call('LLEN', KEYS[2]) >= tonumber(ARGV[2]) then
  return -1
end
local n = redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[3])
if redis.call('TTL', KEYS[1]) < tonumber(ARGV[3]) - tonumber(ARGV[5]) then
  redis.call('EXPIRE', KEYS[1], ARGV[3])
end
return n
"""


class SessionFull(Exception):
    """The session already holds the most messages it may keep."""


class SessionGone(Exception):
    """The session was deleted or expired while this request was under way."""


def messages_key(store_id: str) -> str:
    return store_id + MESSAGES_SUFFIX


def connect(settings: Settings, **overrides: Any) -> redis.Redis:
    """A pooled client with bounded timeouts and redis-py's own retry with backoff."""
    options: dict[str, Any] = {
        "host": settings.redis_host,
        "port": settings.redis_port,
        "db": settings.redis_db,
        "password": settings.redis_auth_token,
        "ssl": settings.redis_tls,
        "socket_connect_timeout": CONNECT_TIMEOUT_SECONDS,
        "socket_timeout": SOCKET_TIMEOUT_SECONDS,
        "socket_keepalive": True,
        "health_check_interval": HEALTH_CHECK_INTERVAL_SECONDS,
        "retry": Retry(ExponentialBackoff(cap=0.25, base=0.02), RETRIES),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
    }
    options.update(overrides)
    return redis.Redis(**options)


class DirectReads:
    """Reads that always go to Redis: used with fakeredis and when REDIS_CLIENT_CACHE=false.

    Values are decoded as TrackedReads decodes them (UTF-8, invalid bytes replaced).
    """

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def sync(self) -> None:
        """Nothing to bring up to date: every read asks Redis."""

    def get(self, key: str) -> str | None:
        value = metrics.time_read("GET", self.client.get, key)
        return None if value is None else value.decode(errors="replace")

    def lrange(self, key: str) -> list[str]:
        items = metrics.time_read("LRANGE", lambda k: self.client.lrange(k, 0, -1), key)
        return [item.decode(errors="replace") for item in items]


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
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._cache: LRU[tuple[str, str], tuple[float, Any]] = LRU(CACHE_MAX_ENTRIES)
        self._lock = threading.Lock()
        self._client: redis.Redis | None = None

    # Values come back decoded (decode_responses) and are shared by every hit: callers must
    # not change them.
    def get(self, key: str) -> str | None:
        return self._read("GET", key, lambda k: self._connected().get(k))

    def lrange(self, key: str) -> list[str]:
        return self._read("LRANGE", key, lambda k: self._connected().lrange(k, 0, -1))

    def _connected(self) -> redis.Redis:
        # Made on first use: a single-connection client connects when it is built, and a
        # worker must be able to start (and answer 503s) while Redis is away.
        if self._client is None:
            self._client = connect(
                self._settings,
                protocol=3,
                decode_responses=True,
                # Bytes that are not UTF-8 (never written by this app) must not break a page:
                # they decode to U+FFFD, and a session document then fails as JSON and is ignored.
                encoding_errors="replace",
                single_connection_client=True,
                redis_connect_func=self._on_connect,
            )
        return self._client

    def sync(self) -> None:
        with self._lock:
            self._drain_invalidations()

    def _read(self, command: str, key: str, fetch: Callable[[str], T]) -> T:
        with self._lock:
            entry = self._cache.get((command, key))
            now = time.monotonic()
            if entry is not None and now - entry[0] < CACHE_MAX_AGE_SECONDS:
                metrics.READ_CACHE_HITS.inc()
                return entry[1]
            metrics.READ_CACHE_MISSES.inc()
            # Any invalidation that reaches us while this read is in flight is processed
            # by the parser before the reply, so the value stored below is never stale.
            value = metrics.time_read(command, fetch, key)
            if value:
                self._cache.put((command, key), (now, value))
            else:
                # Nothing is cached for a missing key: the next read asks Redis again.
                self._cache.pop((command, key), None)
            return value

    def _drain_invalidations(self) -> None:
        connection = self._client.connection if self._client is not None else None
        if connection is None or not connection.is_connected:
            return
        try:
            while connection.can_read(timeout=0):
                connection.read_response(push_request=True)
        except (RedisConnectionError, RedisTimeoutError, OSError):
            # The server went away: what we cached can no longer be kept fresh. The read
            # that follows reconnects (or fails with a clean error).
            self._cache.clear()
            connection.disconnect()

    def _on_connect(self, connection: redis.connection.AbstractConnection) -> None:
        # No health check inside the handshake: its PING would reconnect, and so recurse,
        # once per socket timeout while a frozen server accepts connections but never answers.
        connection.on_connect_check_health(check_health=False)
        # Whatever changed while we were disconnected sent us no invalidation.
        self._cache.clear()
        connection._parser.set_invalidation_push_handler(self._on_invalidation)
        connection.send_command("CLIENT", "TRACKING", "ON", check_health=False)
        connection.read_response()

    def _on_invalidation(self, message: list[Any]) -> None:
        keys = message[1]
        metrics.READ_CACHE_INVALIDATIONS.inc(1 if keys is None else len(keys))
        if keys is None:  # FLUSHALL/FLUSHDB, or the server's tracking table overflowed
            self._cache.clear()
            return
        for raw in keys:
            key = raw.decode() if isinstance(raw, bytes) else raw
            self._cache.pop(("GET", key), None)
            self._cache.pop(("LRANGE", key), None)


def _fail_fast(method: Callable[..., T]) -> Callable[..., T]:
    """While Redis is known to be away, check once, quickly, instead of retrying in full.

    redis-py's Retry (with backoff) rides out a dropped connection; once its retries are spent,
    though, every further request would spend them again (about 125 ms of a sync worker each),
    so during an outage a worker could answer only a few 503s a second. After a failure, each
    request first sends one PING without retries (0.5 s timeouts): if Redis answers, the request
    goes ahead as usual (so the first request after Redis returns succeeds); if not, it fails
    at once. Hand-written: redis-py offers a circuit breaker only for its multi-database client.
    """

    timed = metrics.timed_redis(method)

    @functools.wraps(method)
    def guarded(self: MessageStore, *args: Any, **kwargs: Any) -> T:
        if self.away:
            if not self.ping():
                metrics.FAIL_FAST_RESPONSES.inc()
                raise RedisConnectionError("Redis is still not answering")
            self.away = False
        try:
            return timed(self, *args, **kwargs)
        except (RedisConnectionError, RedisTimeoutError):
            self.away = True
            raise

    return guarded


class MessageStore:
    """Session-scoped operations on Redis that flask-session does not offer."""

    away = False  # the last call found Redis unreachable (see _fail_fast)

    def __init__(
        self,
        client: redis.Redis,
        reads: DirectReads | TrackedReads,
        probe: redis.Redis | None = None,
    ) -> None:
        self.client = client
        self.reads = reads
        self.probe = probe or client
        self._append = client.register_script(_APPEND)

    @_fail_fast
    def document(self, store_id: str) -> str | None:
        """The session's JSON document, as of the start of this request (see TrackedReads)."""
        self.reads.sync()
        return self.reads.get(store_id)

    @_fail_fast
    def messages(self, store_id: str) -> list[str]:
        return self.reads.lrange(messages_key(store_id))

    @_fail_fast
    def append(
        self,
        store_id: str,
        text: str,
        *,
        limit: int,
        ttl_seconds: int,
        document: bytes | None,
        slack_seconds: int = 0,
    ) -> int:
        """Append one message, creating the session from ``document`` when given.

        Returns the new count; raises SessionFull or SessionGone.
        """
        result = self._append(
            keys=[store_id, messages_key(store_id)],
            args=[text, limit, ttl_seconds, document or b"", slack_seconds],
        )
        if result == -1:
            raise SessionFull
        if result == -2:
            raise SessionGone
        return int(result)

    @_fail_fast
    def refresh(self, store_id: str, ttl_seconds: int) -> None:
        """Slide the expiry of both keys forward, in one round trip."""
        with self.client.pipeline(transaction=False) as pipe:
            pipe.expire(store_id, ttl_seconds)
            pipe.expire(messages_key(store_id), ttl_seconds)
            pipe.execute()

    @_fail_fast
    def delete(self, store_id: str) -> None:
        self.client.delete(store_id, messages_key(store_id))

    def ping(self) -> bool:
        """True when Redis answers; used by /readyz for reporting only."""
        try:
            return bool(self.probe.ping())
        except redis.RedisError:
            return False
