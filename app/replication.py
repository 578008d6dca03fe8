"""When a save waits for a replica (``WAIT``), and what a 303 means when none confirms it.

REDIS_WAIT_REPLICAS decides: ``off`` never waits; ``on`` acknowledges a save only once a replica
has it; ``auto`` (the default) waits whenever the primary has a replica, and otherwise decides
from what the server says about its own replication history (``INFO replication``):

* The node has a replica, which did not confirm in time (``WAIT`` fell short): the save is not
  acknowledged (503, safe to repeat). Only a replica in sync counts (``state=online`` in its
  ``slaveN`` line, and not still loading: see ``from_info``). One in a full sync (a replacement,
  minutes on ElastiCache), or online but still loading what it was sent, cannot confirm
  anything, so for what follows the node has no replica. Nor does a syncing replica show that
  the node is the primary: an old primary whose replica was just promoted may still have
  another replica syncing from it.
* The node has no replica, and its replication history (``master_replid``) is the one a replica
  confirmed saves on before, in this worker, or the node was never promoted and still keeps a
  replication backlog (``repl_backlog_active``: a replica was linked to it within the
  backlog's TTL, an hour by default; so a worker that has not saved yet, or has just started,
  knows it too): the primary lost its replica. Either the replica
  died, or it was promoted and this node is a primary on its way out (a failover whose old
  primary still takes writes for a moment): its saves would be lost. Saves are refused for
  ORPHANED_GRACE_SECONDS; a primary still without a replica after that had its replica die,
  and saves are acknowledged again.
* The node has no replica, and its history is not one a replica confirmed: it is a new primary
  (a replica promoted when the old primary was lost for good: its history changed with the
  promotion), or a cache without replicas. Saves are acknowledged at once.

What decides a save is what the node that took it says, over the connection the save went
down: when asking needs a new connection (a demoted primary closes a connection whose ``WAIT``
it cut short, and redis-py reconnects, through the endpoint, to another node), or the node says
it is a replica now, the save is not acknowledged.

Every save acknowledged without a replica's confirmation on a cache that has had replicas
(confirmed here, or a promoted node: ``master_replid2`` is set) counts in
``messageapp_saves_without_replica_total``; a cache run without replicas counts nothing.
docs/failure-behaviour.md states what a 303 guarantees in each case.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError, ResponseError

from . import metrics
from .connection import refused

log = logging.getLogger(__name__)

# A replica acknowledges its offset every second once it has loaded what it was sent: one
# online that has acknowledged nothing (offset 0) for longer than this is still loading it.
# (Any sooner, and a replica that has just come online would count as none for a second.)
LOADING_AFTER_SECONDS = 2

# Longer than a failover's old primary keeps taking writes once its replica was promoted (the
# service demotes or replaces it within seconds), short enough that a primary whose replica
# died (a replica being replaced, maintenance) refuses saves for only a few seconds.
ORPHANED_GRACE_SECONDS = 10.0


class NotReplicated(RedisError):
    """No replica confirmed the save in time: it may be lost in a failover, so it is not
    acknowledged. Saving again is safe (the save id makes it idempotent)."""


@dataclass(frozen=True)
class NodeReplication:
    """What ``INFO replication`` says about the node saves go to."""

    replicas: int  # in sync: the ones that can confirm a save
    history: str  # master_replid
    promoted: bool  # master_replid2 is set: the node was a replica once
    # repl_backlog_active: a replica was linked to it lately (or it was a replica)
    replicated: bool = False
    syncing: int = 0  # linked but not yet in sync (connected_slaves counts them too)
    primary: bool = True  # not role:slave (a node demoted since says so)

    @classmethod
    def from_info(cls, info: dict[str, Any]) -> NodeReplication:
        # redis-py parses each "slave<n>:ip=...,state=online,offset=...,..." line into a dict.
        linked = [
            entry
            for name, entry in info.items()
            if name.startswith("slave") and name[5:].isdigit() and isinstance(entry, dict)
        ]
        in_sync = sum(
            1
            for entry in linked
            if entry.get("state") == "online"
            and (entry.get("offset", 0) > 0 or entry.get("lag", 0) <= LOADING_AFTER_SECONDS)
        )
        return cls(
            replicas=in_sync,
            syncing=len(linked) - in_sync,
            history=str(info.get("master_replid", "")),
            # A node never promoted says 40 zeros, which redis-py parses as the int 0.
            promoted=str(info.get("master_replid2", 0)).strip("0") != "",
            replicated=str(info.get("repl_backlog_active", 0)) == "1",
            primary=info.get("role") not in ("slave", "replica"),  # Valkey 9 still says slave
        )

    @property
    def lost_replica(self) -> bool:
        """A primary never promoted that had a replica lately and has none now."""
        return self.replicas == 0 and self.replicated and not self.promoted


class ReplicaWait:
    """One per worker: the state the decisions above need, and the decisions."""

    def __init__(
        self,
        mode: str,
        timeout_ms: int,
        ask: Callable[[], NodeReplication],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.mode = mode  # "on", "off" or "auto"
        self.timeout_ms = timeout_ms  # how long WAIT waits for a replica
        self._ask = ask  # INFO replication of the node saves go to
        self._clock = clock
        self._lock = threading.Lock()
        self._node: NodeReplication | None = None  # None: ask before the next save
        self._connections = 0  # session connections made so far (node_changed)
        self._confirmed_history: str | None = None  # the history a replica last confirmed
        self._had_replicas = False  # a replica confirmed a save in this worker, ever
        # When saves were first refused because the primary had lost its replica. Forgotten once
        # a replica is seen again: a grace spent on an old outage must not be spent for the next.
        self._orphaned_since: float | None = None

    def node_changed(self) -> None:
        """The connection was made anew (it may lead to another node): ask again."""
        with self._lock:
            self._connections += 1
            self._node = None
            self._orphaned_since = None

    def replicas_seen(self, replicas: int) -> None:
        """The node's replica count, from the role check (once a second)."""
        with self._lock:
            if replicas > 0:
                self._orphaned_since = None
            node = self._node
            if node is not None and (replicas > 0) != (node.replicas > 0):
                self._node = None  # replicas came or went: ask for the whole picture

    def wait_now(self) -> bool:
        """Whether the next save pipelines ``WAIT``."""
        if self.mode == "off":
            return False
        node = self._known_node()
        return node.replicas > 0 or self.mode == "on"

    def wait_refused(self, exc: ResponseError) -> None:
        """The server answered ``WAIT`` with an error: a refusal turns waiting off."""
        if refused(exc) and self.mode != "off":
            log.warning("the server refuses WAIT (%s): saves no longer wait", exc)
            self.mode = "off"

    def settle(self, acknowledged: Any, *, stored: bool = True) -> None:
        """Whether the save just stored is acknowledged: ``acknowledged`` is what ``WAIT``
        answered (None when it was not sent). Returns, or raises NotReplicated. Called as soon
        as the save's replies are read, before anything else uses the connection. With
        ``stored`` False, whether an answer that stored nothing (a session gone) can be
        believed as the same save's would be; never counted as a save without a replica."""
        if self.mode == "off":
            return
        connection = self._connections  # the one the save's replies came on
        if isinstance(acknowledged, int) and acknowledged >= 1:
            with self._lock:
                if self._node is not None:
                    self._confirmed_history = self._node.history
                self._had_replicas = True
                self._orphaned_since = None
            return
        if acknowledged is not None:
            with self._lock:
                self._node = None  # WAIT fell short: ask what the node says now
        node = self._known_node()
        if self._connections != connection:
            # Asked over a connection made since the save (redis-py reconnected: a demoted
            # primary closes a connection whose WAIT it cut short, say), which may lead to
            # another node, the new primary: what it says is nothing about the save.
            raise NotReplicated("the connection was made anew before the save was confirmed")
        if not node.primary:
            raise NotReplicated("the node that took the save is no longer the primary")
        if self.mode == "on":
            raise NotReplicated("no replica confirmed the save in time")
        if node.replicas > 0:
            raise NotReplicated("the replica did not confirm the save in time")
        with self._lock:
            if node.history == self._confirmed_history or node.lost_replica:
                now = self._clock()
                if self._orphaned_since is None:
                    self._orphaned_since = now
                    log.warning(
                        "the primary lost its replica: saves are refused for %.0f s, in case "
                        "it is a primary on its way out of a failover",
                        ORPHANED_GRACE_SECONDS,
                    )
                if now - self._orphaned_since < ORPHANED_GRACE_SECONDS:
                    raise NotReplicated("the primary has just lost its replica")
            counted = self._had_replicas or node.promoted or node.replicated
        if counted and stored:
            metrics.SAVES_WITHOUT_REPLICA.inc()

    def _known_node(self) -> NodeReplication:
        node = self._node
        if node is None:
            try:
                node = self._ask()
            except ResponseError as exc:
                if not refused(exc):
                    raise
                log.warning("the server refuses INFO replication (%s): saves do not wait", exc)
                self.mode = "off" if self.mode == "auto" else self.mode
                node = NodeReplication(replicas=0, history="", promoted=False)
            with self._lock:
                if self._node is None:  # newly asked: say what it answered
                    if not node.primary:
                        log.info("the node saves go to is a replica now")
                    else:
                        log.info(
                            "the primary has %d replica(s) in sync%s%s",
                            node.replicas,
                            f", {node.syncing} not yet in sync" if node.syncing else "",
                            ", and was promoted" if node.promoted else "",
                        )
                self._node = node
                if node.replicas > 0:
                    self._orphaned_since = None
        return node
