"""A worker's own connection to one Redis node, for every command on a session's key.

One connection per node (the primary, or each cluster primary a session lives on), RESP3, with
``CLIENT TRACKING ON OPTOUT NOLOOP`` while the read cache is on: Redis then pushes an
invalidation down this connection for every key read through it as soon as any other client
changes it, and none for the changes made through it; a command sent with
``batch(..., untracked=True)`` (``CLIENT CACHING NO`` just before) is not tracked. That is how
keys the worker has not found stored are read (app/read_cache.py says why): the common
commands, on sessions the worker knows, carry nothing extra. So reads, saves, refreshes and
deletes of a session all go down this one connection: a save's own write never invalidates
the worker's copy (the store patches it with what it appended), while every other client's
write does. A write ends Redis' tracking of a key for its writer; every script that writes a
session therefore reads the key again as its last step (see app/store.py).

A worker serves one request at a time, so one connection per node is enough; a lock keeps
it to one command at a time should a thread ever share it. The connection is made on first use,
so a worker starts (and answers 503s) while Redis is away, and again after it was dropped
(a failover, a restart): every entry cached through it is then forgotten, since whatever
changed meanwhile sent no invalidation.

Hand-written instead of redis-py's ``cache_config`` because redis-py refuses caching unless the
server reports itself as Redis 7.4 or later, which excludes Valkey and every ElastiCache Redis OSS
engine, because its hit path (locks, deep copies, metrics) measured as slow here as a loopback
round trip, and because it cannot patch an entry with a save's own result.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import metrics
from .connection import refused
from .read_cache import ReadCache

log = logging.getLogger(__name__)

# How often a worker asks a node whether it is still the primary (and how many replicas it
# has). A demoted primary keeps its client connections and answers reads with stale data until
# it has resynced from the new primary; one ROLE a second per node bounds that window.
ROLE_CHECK_SECONDS = 1.0

Command = tuple[Any, ...]


@dataclass(frozen=True)
class Role:
    primary: bool
    replicas: int  # on a primary, its replicas in sync


class NodeConnection:
    """One node's connection: commands, pipelined batches, pushed invalidations, role checks."""

    def __init__(
        self,
        name: str,
        make_client: Callable[..., redis.Redis],
        cache: ReadCache | None,
        on_connect: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self._make_client = make_client
        self._cache = cache
        self.tracking = cache is not None  # until the server refuses CLIENT TRACKING
        self._on_connect_callback = on_connect
        self._client: redis.Redis | None = None
        self._lock = threading.RLock()
        self._next_role_check = 0.0
        self._role_refused = False
        # Whether what was cached through this node's connection is already forgotten since it
        # last closed (the shared cache is emptied once per drop, not on every request while
        # the node is down: on a cluster, the other nodes' copies are good).
        self._forgotten = True

    def _connected(self) -> redis.Redis:
        if self._client is None:
            self._client = self._make_client(
                protocol=3,
                decode_responses=True,
                # Bytes that are not UTF-8 (never written by this app) must not break a page:
                # they decode to U+FFFD, and a session document then fails as JSON and is ignored.
                encoding_errors="replace",
                single_connection_client=True,
                redis_connect_func=self._handshake,
            )
        return self._client

    def execute(self, *args: Any) -> Any:
        with self._lock:
            return self._connected().execute_command(*args)

    def batch(self, commands: Sequence[Command], untracked: bool = False) -> tuple[list[Any], bool]:
        """Send ``commands`` at once and read every reply (one round trip); an error reply is
        returned in its place, not raised; also whether Redis tracks the keys they read (not
        with ``untracked``: ``CLIENT CACHING NO`` first). Sent again once after a dropped
        connection, like a single command: every write the app makes is idempotent."""
        with self._lock:
            connection = self._connected().connection  # the client's one connection
            if connection is None:  # never, for a single-connection client
                raise RedisConnectionError("the session connection is closed")
            untracked = untracked and self.tracking
            sent = [("CLIENT", "CACHING", "NO"), *commands] if untracked else commands

            def attempt() -> list[Any]:
                connection.send_packed_command(connection.pack_commands(sent))
                replies: list[Any] = []
                for _ in sent:
                    try:
                        replies.append(connection.read_response())
                    except ResponseError as exc:
                        replies.append(exc)
                return replies

            replies = connection.retry.call_with_retry(attempt, lambda _: connection.disconnect())
            if not untracked:
                return replies, self.tracking
            if isinstance(replies[0], ResponseError) and refused(replies[0]):
                # The command after it was tracked after all; so would be every made-up session
                # id (Redis memory): tracking ends with this connection, the read cache too.
                log.warning("the server refuses CLIENT CACHING (%s): no read cache", replies[0])
                self.tracking = False
                self.disconnect()
            return replies[1:], False

    def drain(self) -> None:
        """Apply the invalidations Redis has pushed since the last request; never waits."""
        with self._lock:
            connection = self._client.connection if self._client is not None else None
            if connection is None or not connection.is_connected:
                # Closed without ``disconnect`` (redis-py drops a connection whose command timed
                # out): nothing keeps what was cached through it fresh any more.
                self._forget()
                return
            try:
                while connection.can_read(timeout=0):
                    connection.read_response(push_request=True)
            except (RedisConnectionError, RedisTimeoutError, OSError):
                # The server went away: what was cached can no longer be kept fresh.
                self.disconnect()

    def role_due(self) -> bool:
        """Whether the node's role is to be asked now (once per ROLE_CHECK_SECONDS)."""
        return not self._role_refused and time.monotonic() >= self._next_role_check

    def role(self) -> Role | None:
        """The node's role (None when the server refuses ROLE, which is then not asked again);
        any other error is raised, and the role asked again at the next check."""
        self._next_role_check = time.monotonic() + ROLE_CHECK_SECONDS
        try:
            reply = self.execute("ROLE")
        except ResponseError as exc:
            if not refused(exc):
                raise
            log.warning("the server refuses ROLE (%s): failovers are noticed later", exc)
            self._role_refused = True
            return None
        if reply[0] != "master":
            return Role(primary=False, replicas=0)
        # Replicas that have acknowledged something: not one still loading what it was sent
        # (nor, for up to a second, one that has just come online).
        return Role(primary=True, replicas=sum(1 for r in reply[2] if int(r[2]) > 0))

    def check_role_now(self) -> None:
        """Have ``role_due`` say yes, whatever the interval (a new connection, a trial)."""
        self._next_role_check = 0.0

    def disconnect(self) -> None:
        """Drop the connection (the next command reconnects) and what was cached through it."""
        with self._lock:
            if self._client is not None and self._client.connection is not None:
                self._client.connection.disconnect()
            self._forget()

    def _forget(self) -> None:
        if self._cache is not None and not self._forgotten:
            self._cache.clear()
        self._forgotten = True

    def _handshake(self, connection: redis.connection.AbstractConnection) -> None:
        # No health check inside the handshake: its PING would reconnect, and so recurse,
        # once per socket timeout while a frozen server accepts connections but never answers.
        connection.on_connect_check_health(check_health=False)
        # Whatever changed while this connection was down sent it no invalidation.
        if self._cache is not None:
            self._cache.clear()
        self._forgotten = False
        self.check_role_now()  # a new connection may lead to another node (the endpoint moved)
        if self._on_connect_callback is not None:
            self._on_connect_callback()
        if not self.tracking:
            return
        set_invalidation_handler(connection, self._invalidated)
        connection.send_command("CLIENT", "TRACKING", "ON", "OPTOUT", "NOLOOP", check_health=False)
        try:
            connection.read_response()
        except ResponseError as exc:
            if not refused(exc):
                raise  # BUSY, LOADING...: this connect fails, and the next one asks again
            log.warning("the server refuses CLIENT TRACKING (%s): no read cache", exc)
            self.tracking = False

    def _invalidated(self, message: list[Any]) -> None:
        keys = message[1]
        metrics.READ_CACHE_INVALIDATIONS.inc(1 if keys is None else len(keys))
        if self._cache is None:
            return
        if keys is None:  # FLUSHALL/FLUSHDB, or the server's tracking table overflowed
            self._cache.clear()
            return
        for key in keys:
            self._cache.discard(key.decode() if isinstance(key, bytes) else key)


def set_invalidation_handler(
    connection: redis.connection.AbstractConnection, handler: Callable[[list[Any]], None]
) -> None:
    """Have ``handler`` called with each invalidation push the connection reads.

    redis-py 8.1 has no public API for this (its own client-side cache reaches into the
    connection's parser the same way), so this is the one place that uses the private
    ``connection._parser.set_invalidation_push_handler``; tests/unit/test_nodes_seam.py fails,
    naming it, when a redis-py upgrade removes it.
    """
    connection._parser.set_invalidation_push_handler(handler)
