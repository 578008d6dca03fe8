"""The worker's one guarded way to Redis: every command of the store, the reads and the rate
limiter goes through ``RedisClient.run``, which holds the failure policy in one place.

* **Fail fast** (app/circuit.py): once Redis is found away, calls are refused at once for a
  cool-down, then one call is tried; so a frozen Redis never holds a worker for long. One
  circuit per worker on one primary; on a cluster one per node, so that a frozen node fails
  only the sessions (and rate-limit counters) it holds, not every page of the worker.
* **Failover**: a READONLY answer means the connection leads to a primary that was demoted: every
  connection is dropped, so that the next one is made through the endpoint to the new primary,
  and the call is made once more (every write here is idempotent). Each node a worker reads
  from is asked its role at most once a second (app/nodes.py), since a demoted primary keeps
  serving stale reads without saying READONLY.
* **Cluster**: a session's commands go to its node's own connection (``get_node_from_key``,
  redis-py's public routing); a MOVED or ASK there (a slot moving, a failover) sends that one
  command through the cluster client, which follows redirections and refreshes its slot map,
  and the next command is routed by the new map. A node that fails a call on its own
  connection (it stopped answering: no redirection, no refusal) has the slot map asked for
  again, off the request path (``SlotMaps``), so that its sessions follow the cluster's
  failover. The cluster client's "no node reachable" (not a RedisError) becomes the
  connection error it is.
* **Timing and counting** by operation name (``save``, ``read``, ``rate_limit``...), for the
  metrics; reads answered by the read cache are not Redis calls and are not timed.

Besides the session connections (one per node) there is one pooled client, for the rate
limiter, the cluster's routing and redirected commands, and the readiness probe's PING. On a
cluster the rate limiter counts through a cluster client of its own (app/ratelimit.py), which
``reset`` drops too (``also_drop``).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

import redis
from redis.cluster import RedisCluster
from redis.exceptions import (
    AskError,
    ClusterError,
    NoScriptError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import metrics
from .circuit import COOL_DOWN_SECONDS, Circuit
from .connection import Client, MadeOnFirstUse, disconnect, reload_slot_map
from .nodes import Command, NodeConnection
from .read_cache import ReadCache, StoredSession

log = logging.getLogger(__name__)

T = TypeVar("T")
PRIMARY = "primary"  # the one node's name on one primary: the endpoint, wherever it leads


class NodeEvents(Protocol):
    """What a node's connection tells others (the replication policy listens)."""

    def node_changed(self) -> None: ...

    def replicas_seen(self, replicas: int) -> None: ...


class Script:
    """A Lua script, sent by its SHA1 (EVALSHA) and loaded when a server lacks it."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()  # noqa: S324 - Redis names scripts so


class RedisClient:
    def __init__(
        self,
        pooled: redis.Redis | MadeOnFirstUse[RedisCluster],
        make_node_client: Callable[..., redis.Redis],
        *,
        cache: ReadCache | None,
    ) -> None:
        """``pooled``: the pooled client, or on a cluster what makes redis-py's cluster client
        on first use; ``make_node_client``: builds a client for one node's session
        connection (given ``host`` and ``port`` on a cluster, the endpoint's otherwise)."""
        self._cluster_client = pooled if isinstance(pooled, MadeOnFirstUse) else None
        self._primary_client = None if isinstance(pooled, MadeOnFirstUse) else pooled
        self.cluster = self._cluster_client is not None
        self._make_node_client = make_node_client
        self.cache = cache
        self._events: NodeEvents | None = None
        # The worker's circuit: every call's on one primary; on a cluster, where each node has
        # its own (below), only the calls no one node answers for, such as the readiness PING.
        self.circuit = Circuit()
        self._node_circuits: dict[str, Circuit] = {}
        self._slot_maps = (
            SlotMaps(self._cluster_client) if self._cluster_client is not None else None
        )
        self._nodes: dict[str, NodeConnection] = {}
        self._nodes_lock = threading.Lock()
        self._others: list[Client] = []
        self._durations: dict[str, Any] = {}
        self._errors: dict[tuple[str, str], Any] = {}
        for operation in metrics.REDIS_OPERATIONS:
            self._duration(operation)  # its series at 0 from the worker's start

    @property
    def pooled(self) -> Client:
        """The pooled client; on a cluster, redis-py's cluster client, made now if need be
        (``_cluster``)."""
        if self._primary_client is not None:
            return self._primary_client
        return self._cluster()

    def _cluster(self) -> RedisCluster:
        """The cluster client, made on first need (``made``)."""
        maker = self._cluster_client
        if maker is None:
            raise TypeError("one primary has no cluster client")  # a caller's mistake
        return self.made(maker)

    def made(self, client: MadeOnFirstUse[T]) -> T:
        """What ``client`` makes, made now if need be, as one guarded call ("connect"): while
        no node answers, a connection error, and the worker's circuit fails the next calls at
        once for a cool-down (connection.MadeOnFirstUse says why not at boot)."""
        made = client.made
        return made if made is not None else self.run("connect", client.get)

    def listen(self, events: NodeEvents) -> None:
        """Tell ``events`` when a session connection is made and what the role check sees."""
        self._events = events

    # The guard -----------------------------------------------------------------------------

    def run(
        self,
        operation: str,
        call: Callable[[], T],
        circuit: Circuit | None = None,
        *,
        probe: bool = False,
    ) -> T:
        """Make one Redis call under the failure policy; ``operation`` names it in the metrics.
        ``circuit``: the one of the node the call goes to (``circuit_for``), else the worker's.
        ``probe``: a refusal answers no request 503 (readiness reports it), so it is not
        counted as one."""
        if circuit is None:
            circuit = self.circuit
        if not circuit.allow():
            if not probe:
                metrics.FAIL_FAST_RESPONSES.inc()
            raise RedisConnectionError("Redis is not answering (trying again after a cool-down)")
        started = time.perf_counter()
        try:
            try:
                result = call()
            except ReadOnlyError:
                log.warning("Redis answered READONLY (a failover): reconnecting")
                self.reset()
                result = call()
        except (RedisConnectionError, RedisTimeoutError, ClusterError) as exc:
            circuit.failed()
            self._count(operation, exc)
            if self._slot_maps is not None and circuit is not self.circuit:
                self._slot_maps.reload(self._name_of(circuit))
            raise
        except RedisClusterException as exc:
            # The cluster client's "no node reachable" is not a RedisError: make it the
            # connection error it is, so that it costs a 503 like any other outage.
            circuit.failed()
            error = RedisConnectionError(str(exc))
            self._count(operation, error)
            raise error from exc
        except RedisError as exc:
            circuit.succeeded()  # Redis answered, with an error
            self._count(operation, exc)
            raise
        except BaseException:
            circuit.succeeded()  # not about Redis: release a trial
            raise
        finally:
            self._duration(operation).observe(time.perf_counter() - started)
        circuit.succeeded()
        return result

    def _duration(self, operation: str) -> Any:
        child = self._durations.get(operation)
        if child is None:
            child = self._durations[operation] = metrics.REDIS_DURATION.labels(operation)
            # Its error counts too, at 0 (see metrics.REDIS_OPERATIONS).
            for kind in metrics.ERROR_KINDS:
                self._errors[(operation, kind)] = metrics.REDIS_ERRORS.labels(operation, kind)
        return child

    def _count(self, operation: str, exc: BaseException) -> None:
        kind = metrics.error_kind(exc)
        child = self._errors.get((operation, kind))
        if child is None:
            child = self._errors[(operation, kind)] = metrics.REDIS_ERRORS.labels(operation, kind)
        child.inc()

    def also_drop(self, client: Client) -> None:
        """Have ``reset`` drop the connections of ``client`` too: another client of this
        worker's (the rate limiter's own on a cluster), so that the IAM connection recycler
        (app/credentials.py) leaves none to reach ElastiCache's 12-hour close."""
        self._others.append(client)

    def reset(self) -> None:
        """Drop every connection (they lead to a demoted node, or are due for recycling); the
        next ones use the endpoint."""
        for node in list(self._nodes.values()):
            node.disconnect()
        made = self._primary_client if self._cluster_client is None else self._cluster_client.made
        for client in (made, *self._others):
            if client is not None:  # a cluster client not made yet has nothing to drop
                disconnect(client)
        if self.cache is not None:
            self.cache.clear()

    def ping(self) -> bool:
        """Whether Redis answers (for /readyz, which reports and never waits long): on a
        cluster, whether its default node does, asked directly. Through the cluster client, a
        timeout would have redis-py reload its slot map inside the probe, waiting on every
        frozen node (and on a reload ``SlotMaps`` is making) before the probe could answer."""
        try:
            if self._primary_client is not None:
                call = self._primary_client.ping
            else:
                client = self._cluster()
                call = functools.partial(self._ping_default_node, client)
            return bool(self.run("ping", call, probe=True))
        except RedisError:
            return False

    def _ping_default_node(self, client: RedisCluster) -> Any:
        """PING the cluster client's default node (redis-py's public ``ClusterNode``). One that
        fails is replaced by another primary, and the slot map asked for again (``SlotMaps``),
        as redis-py itself does after a failed command: else a dead default node would have the
        probe report Redis unavailable for good, however well the rest of the cluster serves."""
        node = client.get_default_node()
        if node is None or node.redis_connection is None:
            raise RedisConnectionError("no cluster node is known")
        try:
            return node.redis_connection.ping()
        except (RedisConnectionError, RedisTimeoutError):
            client.replace_default_node()
            if self._slot_maps is not None:
                self._slot_maps.reload(node.name)
            raise

    # Session commands ----------------------------------------------------------------------

    def read(
        self, key: str, parse: Callable[[dict[str, str]], StoredSession | None], at_least: int = 0
    ) -> Any:
        """The hash at ``key``, parsed: from the read cache while Redis keeps it fresh (never
        while Redis is known to be away: then the read fails at once, or is the circuit's
        trial), and when the cached copy holds at least ``at_least`` messages."""
        node = self._route(key)
        self._watch(node)
        circuit = self._circuit_of(node)
        cache = self.cache if node.tracking and not circuit.is_open else None
        if cache is not None:
            cache.expire()  # what aged out leaves memory, even in a worker that reads little
            hit = cache.get(key, node.name, at_least)
            if hit is not None:
                return hit
        # Tracked only once found stored here: a made-up session id then costs Redis no memory
        # (app/read_cache.py).
        untracked = self.cache is not None and not self.cache.known(key)
        parsed, direct, tracked = self._hgetall(node, key, parse, untracked, circuit)
        if untracked and parsed is not None and direct and cache is not None:
            # Found: read again, tracked, for the copy to cache (a read made before tracking
            # began could miss a change made in between). Once per session per worker.
            parsed, direct, tracked = self._hgetall(node, key, parse, False, circuit)
        if self.cache is not None:
            if tracked and parsed is not None:
                self.cache.put(key, node.name, parsed)
            elif tracked:
                self.cache.discard(key)  # nothing is cached for a missing key
            elif parsed is not None:
                self.cache.found(key)
        return parsed

    def _hgetall(
        self,
        node: NodeConnection,
        key: str,
        parse: Callable[[dict[str, str]], StoredSession | None],
        untracked: bool,
        circuit: Circuit,
    ) -> tuple[StoredSession | None, bool, bool]:
        """One read of the hash at ``key``, parsed; whether it came from the node's connection,
        and whether that connection tracks the key now."""
        replies, direct, tracked = self.run(
            "read", lambda: self._on_node(node, key, [("HGETALL", key)], untracked), circuit
        )
        if isinstance(replies[0], Exception):
            raise replies[0]
        return parse(replies[0] if direct else _decoded(replies[0])), direct, tracked

    def script(
        self,
        operation: str,
        key: str,
        script: Script,
        args: Sequence[Any],
        then: Sequence[Command] = (),
        *,
        creates: bool = False,
    ) -> tuple[list[Any], str | None]:
        """Run ``script`` on ``key`` (one round trip, with ``then`` pipelined after it on the
        same connection): the replies, the script's first, and the name of the node whose own
        connection they came from when that connection tracks the key; None when there is
        none (redirected through the cluster client, or no tracking): a copy of what the script
        stored may then not be cached, since no invalidation would reach it. The name is the
        node that ran it, not where the key is routed afterwards: a slot map reloaded in
        between would file the copy under a node whose connection never read the key.
        Not tracked but for a key found stored here, or one the script ``creates`` (``read``).
        A server without the script (new, or restarted) has it loaded and run again."""
        node = self._route(key)
        commands = [("EVALSHA", script.sha, 1, key, *args), *then]
        untracked = self.cache is not None and not (creates or self.cache.known(key))

        def call() -> tuple[list[Any], str | None]:
            replies, direct, tracked = self._on_node(node, key, commands, untracked)
            if isinstance(replies[0], NoScriptError):
                self._load(node, script, everywhere=not direct)
                replies, direct, tracked = self._on_node(node, key, commands, untracked)
            if isinstance(replies[0], Exception):
                raise replies[0]
            return replies, node.name if tracked else None

        return self.run(operation, call, self._circuit_of(node))

    def delete(self, key: str) -> int:
        node = self._route(key)
        try:
            replies, _, _ = self.run(
                "delete", lambda: self._on_node(node, key, [("DEL", key)]), self._circuit_of(node)
            )
        finally:
            self.forget(key)
        if isinstance(replies[0], Exception):
            raise replies[0]
        return int(replies[0])

    def on_primary(self, operation: str, *command: Any) -> Any:
        """One command on the primary's session connection (one primary only: the INFO the
        replication policy reads must come from the node its saves go to)."""
        node = self._node(PRIMARY, self._make_node_client)
        return self.run(operation, lambda: node.execute(*command))

    # What this worker knows it changed -----------------------------------------------------

    def appended(self, key: str, node: str, number: int, text: str) -> None:
        """The script run on ``node`` (its name, as ``script`` returned it) appended a message."""
        if self.cache is not None:
            self.cache.appended(key, node, number, text)

    def cached(self, key: str, node: str, session: StoredSession) -> None:
        """The script run on ``node`` stored ``session`` as it is now."""
        if self.cache is not None:
            self.cache.put(key, node, session)

    def found(self, key: str) -> None:
        """A script found the session at ``key`` stored: its next commands are tracked."""
        if self.cache is not None:
            self.cache.found(key)

    def forget(self, key: str) -> None:
        if self.cache is not None:
            self.cache.discard(key)

    # Nodes ---------------------------------------------------------------------------------

    def circuit_for(self, key: str) -> Circuit:
        """The circuit of the node that holds ``key`` (the worker's on one primary, and where
        no node holds its slot now: the call itself then fails, in ``run``)."""
        try:
            return self._circuit_of(self._route(key))
        except RedisConnectionError:
            return self.circuit

    def _circuit_of(self, node: NodeConnection) -> Circuit:
        return self._node_circuits.get(node.name, self.circuit)

    def _name_of(self, circuit: Circuit) -> str | None:
        return next((name for name, c in self._node_circuits.items() if c is circuit), None)

    def _route(self, key: str) -> NodeConnection:
        if self._cluster_client is None:
            return self._node(PRIMARY, self._make_node_client)
        try:
            target = self._cluster().get_node_from_key(key)
        except RedisClusterException as exc:  # no node holds the slot now
            raise RedisConnectionError(str(exc)) from exc
        return self._node(
            target.name,
            functools.partial(self._make_node_client, host=target.host, port=target.port),
        )

    def _node(self, name: str, make: Callable[..., redis.Redis]) -> NodeConnection:
        node = self._nodes.get(name)
        if node is None:
            with self._nodes_lock:
                node = self._nodes.get(name)
                if node is None:
                    node = NodeConnection(name, make, self.cache, self._node_changed)
                    if self.cluster:
                        self._node_circuits[name] = Circuit()
                    self._nodes[name] = node
        return node

    def _node_changed(self) -> None:
        if self._events is not None:
            self._events.node_changed()

    def _watch(self, node: NodeConnection) -> None:
        """Before answering from the cache: apply pushed invalidations, and (once a second)
        check that the node is still a primary."""
        node.drain()
        if not node.role_due():
            return
        role = self.run("role", node.role, self._circuit_of(node))
        if role is None:
            return
        if not role.primary:
            log.warning("the Redis node this worker reads from is now a replica: reconnecting")
            self._demoted(node)
        elif self._events is not None and not self.cluster:
            self._events.replicas_seen(role.replicas)

    def _demoted(self, node: NodeConnection) -> None:
        if self.cluster:
            node.disconnect()  # its slots now answer MOVED: the cluster client finds the primary
        else:
            self.reset()

    def _on_node(
        self,
        node: NodeConnection,
        key: str,
        commands: Sequence[Command],
        untracked: bool = False,
    ) -> tuple[list[Any], bool, bool]:
        """``commands`` on the node's connection, in one round trip: the replies (an error reply
        in its place), whether they came from that connection, and whether it tracks the keys
        they read (not ``untracked`` ones). On a cluster, a redirection (the slot moved, or is
        moving) or a lost node (a failover) sends them through the cluster client instead,
        which follows the redirection and refreshes its slot map."""
        try:
            replies, tracked = node.batch(commands, untracked)
        except RedisConnectionError:
            if not self.cluster:
                raise
            node.disconnect()
        else:
            if not (self.cluster and isinstance(replies[0], AskError)):
                return replies, True, tracked
        self.forget(key)
        return [self._via_cluster_client(command) for command in commands], False, False

    def _via_cluster_client(self, command: Command) -> Any:
        try:
            return self._cluster().execute_command(*command)
        except ResponseError as exc:
            return exc

    def _load(self, node: NodeConnection, script: Script, everywhere: bool) -> None:
        """Load ``script`` on the node; ``everywhere`` (a redirected command, run on whichever
        node the cluster client picks): on every primary, through the cluster client. Only then:
        a node that stopped answering would hold every save that loads a script."""
        if everywhere and self._cluster_client is not None:
            self._cluster().script_load(script.source)
        else:
            node.execute("SCRIPT", "LOAD", script.source)


class SlotMaps:
    """Reloads the cluster client's slot map when a node fails a call on the worker's own
    connection, so that once the cluster has promoted a replica in its place, its sessions are
    routed there. A node that stops answering (frozen, cut off) neither redirects nor refuses:
    without this, its sessions would fail until it did.

    In a thread of its own, at most once a cool-down: asking a frozen node costs a socket
    timeout, and with the whole cluster frozen, one per node; the request that met the failure
    answers its 503 at once instead of waiting for that.
    """

    def __init__(self, client: MadeOnFirstUse[RedisCluster]) -> None:
        self._client = client
        self._wanted = threading.Event()
        self._failed: str | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def reload(self, failed: str | None) -> None:
        """Ask for a reload, asking the node named ``failed`` last; never waits."""
        self._failed = failed
        self._wanted.set()
        if self._thread is None:
            with self._lock:
                if self._thread is None:  # started in the worker, on first need
                    self._thread = threading.Thread(
                        target=self._run, name="slot-map-reload", daemon=True
                    )
                    self._thread.start()

    def _run(self) -> None:
        while True:
            self._wanted.wait()
            self._wanted.clear()
            try:
                reload_slot_map(self._client.get(), self._failed)
            except (RedisError, RedisClusterException) as exc:
                log.warning("could not reload the cluster's slot map: %s", exc)
            except Exception:
                # Nothing else would see it, and a dead thread would never reload again.
                log.exception("reloading the cluster's slot map failed")
            time.sleep(COOL_DOWN_SECONDS)  # at most one reload a cool-down


def _decoded(fields: dict) -> dict[str, str]:
    """The cluster client's answer (bytes) as the session connections give it (text)."""
    return {_text(k): _text(v) for k, v in fields.items()}


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value
