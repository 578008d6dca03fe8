"""Everything this app keeps in Redis about a session, and how a save is stored.

A session is one hash, ``session:{<sid>}`` (``sid`` is flask-session's session id; the braces
are a cluster hash tag, so whatever is added to a session later stays in its slot), with a
TTL of the session lifetime:

* ``doc``: flask-session's JSON document (when the session started);
* ``n``: the number of messages, ``bytes``: their size in bytes;
* ``m:<i>``: message ``i`` (1 for the oldest);
* ``s:<save id>``: the number of the message stored by that save (see ``append``).

One key makes a session one eviction unit: under memory pressure Redis drops whole sessions,
never a document without its messages. Storing each message in its own field makes a save
O(1) whatever the session holds, where the common pattern (read the list from the session,
append, write it all back) loses concurrent saves and grows with the session.

Keys of the layout before this one (``session:<sid>`` and ``session:<sid>:messages``) are
never read: such sessions start afresh and their keys expire with their TTL.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import (
    NoScriptError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    ResponseError,
)
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import metrics
from .connection import Client, disconnect
from .reads import Reads

log = logging.getLogger(__name__)

T = TypeVar("T")

KEY_PREFIX = "session:"

# One script per save, so that neither the limits nor the order of concurrent saves can be
# raced, and a new session's document and first message appear together.
# KEYS[1]: the session. ARGV: the message, the count limit, the TTL, the new session's
# document (empty for an existing session), the save id, the byte budget.
# A save id already stored answers the number it got then, so a save re-sent (by redis-py
# after a timeout, or by the user pressing Save again on the same form) is stored once.
# A save for a session that is gone (destroyed in another tab, or expired) is refused rather
# than resurrecting it, as Spring Session does.
_APPEND = """
local key = KEYS[1]
local done = redis.call('HGET', key, 's:' .. ARGV[5])
if done then
  -- A write even here, so that a demoted primary answers READONLY rather than this stale
  -- "stored" (the retry then asks the new primary, which may not have the save).
  redis.call('EXPIRE', key, ARGV[3])
  return tonumber(done)
end
local state = redis.call('HMGET', key, 'doc', 'n', 'bytes')
if ARGV[4] == '' then
  if not state[1] then
    return -2
  end
elseif redis.call('EXISTS', key) == 1 then
  return -2
end
local n = tonumber(state[2] or '0')
local bytes = tonumber(state[3] or '0') + #ARGV[1]
if n >= tonumber(ARGV[2]) then
  return -1
end
if bytes > tonumber(ARGV[6]) then
  return -3
end
n = n + 1
if ARGV[4] ~= '' then
  redis.call('HSET', key, 'doc', ARGV[4])
end
redis.call('HSET', key, 'm:' .. n, ARGV[1], 'n', n, 'bytes', bytes, 's:' .. ARGV[5], n)
redis.call('EXPIRE', key, ARGV[3])
return n
"""


class SessionFull(Exception):
    """The session already holds the most messages it may keep."""


class SessionOverBudget(Exception):
    """The message would take the session over its byte budget."""


class SessionGone(Exception):
    """The session was deleted or expired while this request was under way."""


class NotReplicated(RedisError):
    """No replica confirmed the save in time: it may be lost in a failover, so it is not
    acknowledged. Saving again is safe (the save id makes it idempotent)."""


def session_key(sid: str) -> str:
    return f"{KEY_PREFIX}{{{sid}}}"


@dataclass(frozen=True)
class StoredSession:
    document: str
    messages: list[str]


def _parse(fields: dict[str, str]) -> StoredSession | None:
    document = fields.get("doc")
    if document is None:
        return None
    count = int(fields.get("n", "0"))
    found = (fields.get(f"m:{i}") for i in range(1, count + 1))
    return StoredSession(document, [m for m in found if m is not None])


def _guarded(method: Callable[..., T]) -> Callable[..., T]:
    """Fail fast while Redis is away; reconnect through the endpoint after a failover.

    redis-py's Retry (with backoff) rides out a dropped connection; once its retries are spent,
    though, every further request would spend them again (about 125 ms of a sync worker each),
    so during an outage a worker could answer only a few 503s a second. After a failure, each
    request first sends one PING without retries (0.5 s timeouts): if Redis answers, the request
    goes ahead as usual (so the first request after Redis returns succeeds); if not, it fails
    at once. Hand-written: redis-py offers a circuit breaker only for its multi-database client.

    READONLY means the connection leads to a primary that was demoted (a failover, with the
    connection opened before it): every connection is dropped, so that the next one is made
    through the endpoint to the new primary, and the call is made once more. Every write here
    is idempotent, so that second attempt cannot store anything twice.
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
            try:
                return timed(self, *args, **kwargs)
            except ReadOnlyError:
                log.warning("Redis answered READONLY (a failover): reconnecting")
                self.reset()
                return timed(self, *args, **kwargs)
        except (RedisConnectionError, RedisTimeoutError):
            self.away = True
            raise
        except RedisClusterException as exc:
            # The cluster client's "no node reachable" is not a RedisError: make it the
            # connection error it is, so that it costs a 503 like any other outage.
            self.away = True
            raise RedisConnectionError(str(exc)) from exc

    return guarded


class MessageStore:
    """Session-scoped operations on Redis that flask-session does not offer."""

    away = False  # the last call found Redis unreachable (see _guarded)

    def __init__(
        self,
        client: Client,
        reads: Reads,
        probe: Client | None = None,
        *,
        wait_replicas: str = "off",
        wait_timeout_ms: int = 200,
    ) -> None:
        self.client = client
        self.reads = reads
        self.probe = probe or client
        self._append = client.register_script(_APPEND)
        # "on", "off", or "auto" until the first save decides (see _wait_for_replica).
        self._wait = wait_replicas
        self._wait_timeout_ms = wait_timeout_ms

    @_guarded
    def load(self, key: str) -> StoredSession | None:
        """The session as of the start of this request (see reads.TrackedReads); None if absent."""
        self.reads.sync()
        return _parse(self.reads.fields(key))

    @_guarded
    def messages(self, key: str) -> list[str]:
        stored = _parse(self.reads.fields(key))
        return [] if stored is None else stored.messages

    @_guarded
    def append(
        self,
        key: str,
        text: str,
        *,
        save_id: str,
        limit: int,
        max_bytes: int,
        ttl_seconds: int,
        document: bytes | None,
    ) -> int:
        """Append one message once per ``save_id``, creating the session from ``document``
        when given. With REDIS_WAIT_REPLICAS, returns only once a replica has the save.

        Returns the message's number; raises SessionFull, SessionOverBudget, SessionGone,
        or NotReplicated.
        """
        args = [text, limit, ttl_seconds, document or b"", save_id, max_bytes]
        wait = self._wait_for_replica()
        try:
            results = self._run_save(key, args, wait)
            if isinstance(results[0], NoScriptError):  # a new or restarted server: load it
                self.client.script_load(_APPEND)
                results = self._run_save(key, args, wait)
        finally:
            self.reads.forget(key)  # even when failed: the script may have run
        result = results[0]
        if isinstance(result, Exception):
            raise result
        if result == -1:
            raise SessionFull
        if result == -2:
            raise SessionGone
        if result == -3:
            raise SessionOverBudget
        if wait:
            self._check_replicated(results[1])
        return int(result)

    def _run_save(self, key: str, args: list[Any], wait: bool) -> list[Any]:
        if not wait:
            # One command, which a cluster client routes to the session's slot and follows
            # through MOVED and ASK by itself.
            try:
                return [self.client.evalsha(self._append.sha, 1, key, *args)]
            except ReadOnlyError:
                raise
            except ResponseError as exc:
                return [exc]
        # One pipeline, so that WAIT runs on the connection that made the write. (Never on a
        # cluster: its client sends a command without a key to whichever node it likes.)
        with self.client.pipeline(transaction=False) as pipe:
            pipe.evalsha(self._append.sha, 1, key, *args)
            pipe.execute_command("WAIT", 1, self._wait_timeout_ms)
            return pipe.execute(raise_on_error=False)

    def _wait_for_replica(self) -> bool:
        if self._wait == "auto":
            # Decided once per process, at its first save: on when the primary has replicas.
            try:
                replicas = int(self.client.info("replication").get("connected_slaves", 0))
            except ResponseError as exc:
                log.warning("cannot read INFO replication (%s): saves do not wait", exc)
                replicas = 0
            self._wait = "on" if replicas else "off"
            log.info("saves wait for a replica: %s (%d connected)", self._wait, replicas)
        return self._wait == "on"

    def _check_replicated(self, acknowledged: Any) -> None:
        if isinstance(acknowledged, ResponseError) and "replica" in str(acknowledged):
            # A demoted primary: the same as READONLY (see _guarded).
            raise ReadOnlyError(str(acknowledged))
        if isinstance(acknowledged, ResponseError):
            log.warning("the server refuses WAIT (%s): saves no longer wait", acknowledged)
            self._wait = "off"
        elif isinstance(acknowledged, Exception):
            raise acknowledged
        elif int(acknowledged) < 1:
            raise NotReplicated("no replica confirmed the save in time")

    @_guarded
    def write_document(self, key: str, document: bytes, ttl_seconds: int) -> None:
        """Store the session's document (changed by code other than ``append``)."""
        try:
            with self.client.pipeline(transaction=True) as pipe:
                pipe.hset(key, "doc", document)
                pipe.expire(key, ttl_seconds)
                pipe.execute()
        finally:
            self.reads.forget(key)

    @_guarded
    def refresh(self, key: str, ttl_seconds: int) -> None:
        """Slide the session's expiry forward."""
        self.client.expire(key, ttl_seconds)

    @_guarded
    def delete(self, key: str) -> None:
        try:
            self.client.delete(key)
        finally:
            self.reads.forget(key)

    @_guarded
    def call(self, operation: Callable[[], T]) -> T:
        """Run another module's Redis operation (the rate limiter's) under the same policy."""
        return operation()

    def reset(self) -> None:
        """Drop every connection (they lead to a demoted node); the next ones use the endpoint."""
        disconnect(self.client)
        disconnect(self.probe)
        self.reads.reset()

    def ping(self) -> bool:
        """True when Redis answers; used by /readyz for reporting only."""
        try:
            return bool(self.probe.ping())
        except (redis.RedisError, RedisClusterException):
            return False
