"""The replication policy's decisions (app/replication.py): when a save waits for a replica, and
whether a save no replica confirmed is acknowledged. The same against real servers, through a
failover: tests/system/test_redis_faults.py."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY
from redis.exceptions import ResponseError

from app.replication import ORPHANED_GRACE_SECONDS, NodeReplication, NotReplicated, ReplicaWait

OLD, NEW = "a" * 40, "b" * 40  # two replication histories (master_replid)


class Node:
    """What INFO replication says; the test changes it as the cache would."""

    def __init__(self, replicas: int, history: str = OLD, promoted: bool = False) -> None:
        self.now = NodeReplication(replicas, history, promoted)
        self.asked = 0
        self.reconnects: ReplicaWait | None = None  # asking makes a new connection first

    def ask(self) -> NodeReplication:
        self.asked += 1
        if self.reconnects is not None:
            self.reconnects.node_changed()  # the new connection's handshake
        return self.now


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def counted() -> float:
    return REGISTRY.get_sample_value("messageapp_saves_without_replica_total") or 0.0


def policy(node: Node, mode: str = "auto") -> tuple[ReplicaWait, Clock]:
    clock = Clock()
    return ReplicaWait(mode, 200, node.ask, clock), clock


def refused_for_the_grace_then_counted(wait: ReplicaWait, clock: Clock) -> None:
    """A primary that lost its replica: saves refused for the grace, then acknowledged and
    counted as saved without a replica."""
    with pytest.raises(NotReplicated):
        wait.settle(None)
    clock.now += ORPHANED_GRACE_SECONDS
    before = counted()
    wait.settle(None)
    assert counted() == before + 1


def test_with_a_replica_a_save_waits_and_a_confirmation_acknowledges_it():
    node = Node(replicas=1)
    wait, _ = policy(node)
    assert wait.wait_now() is True
    before = counted()
    wait.settle(1)
    assert counted() == before
    assert node.asked == 1  # asked once, then known


def test_a_replica_too_slow_to_confirm_is_not_acknowledged():
    node = Node(replicas=1)
    wait, _ = policy(node)
    wait.wait_now()
    with pytest.raises(NotReplicated):
        wait.settle(0)  # WAIT fell short; INFO: the replica is still there, just slow


def test_a_primary_that_lost_its_replica_refuses_saves_for_a_grace_period():
    """Its replica may have been promoted: this node may be a primary on its way out, whose
    saves the failover would lose."""
    node = Node(replicas=1)
    wait, clock = policy(node)
    wait.wait_now()
    wait.settle(1)  # confirmed on history OLD
    node.now = NodeReplication(0, OLD, promoted=False)  # the same node, no replica now
    before = counted()
    with pytest.raises(NotReplicated):
        wait.settle(0)
    clock.now += ORPHANED_GRACE_SECONDS - 1
    assert wait.wait_now() is False  # no replica: nothing to wait for
    with pytest.raises(NotReplicated):
        wait.settle(None)
    clock.now += 1  # still the primary after the grace period: its replica died
    wait.settle(None)
    assert counted() == before + 1


def test_a_promoted_primary_without_a_replica_acknowledges_at_once_and_counts():
    node = Node(replicas=1)
    wait, _ = policy(node)
    wait.wait_now()
    wait.settle(1)  # confirmed on history OLD
    wait.node_changed()  # reconnected through the endpoint after the failover...
    node.now = NodeReplication(0, NEW, promoted=True)  # ...to the promoted replica
    before = counted()
    assert wait.wait_now() is False
    wait.settle(None)
    wait.settle(None)
    assert counted() == before + 2


def test_an_answer_that_stored_nothing_is_checked_as_a_save_but_never_counted():
    """A "session gone" from the save script is believed only where a save would be (a primary
    that just lost its replica may be on its way out of a failover), and is no save made
    without a replica."""
    node = Node(replicas=1)
    wait, clock = policy(node)
    wait.wait_now()
    wait.settle(1)
    node.now = NodeReplication(0, OLD, promoted=False)  # its replica is gone (promoted, say)
    with pytest.raises(NotReplicated):
        wait.settle(0, stored=False)
    clock.now += ORPHANED_GRACE_SECONDS
    before = counted()
    wait.settle(None, stored=False)
    assert counted() == before
    wait.settle(None)
    assert counted() == before + 1


def test_what_a_new_connection_says_does_not_decide_a_save_made_on_the_old_one():
    """WAIT fell short (here: cut short by the old primary's demotion, which then closes the
    connection); asking the node reconnects through the endpoint, to the promoted replica,
    which says "a new primary". The save is on the old node: not acknowledged. The next save,
    made on the new connection, is decided by what the new primary says."""
    node = Node(replicas=1)
    wait, _ = policy(node)
    wait.wait_now()
    wait.settle(1)  # confirmed on history OLD

    node.reconnects = wait
    node.now = NodeReplication(0, NEW, promoted=True)
    before = counted()
    with pytest.raises(NotReplicated, match="made anew"):
        wait.settle(ResponseError("UNBLOCKED force unblock from blocking operation"))
    assert counted() == before
    node.reconnects = None
    assert wait.wait_now() is False
    wait.settle(None)  # on the new primary, asked on its own connection
    assert counted() == before + 1


def test_a_node_demoted_since_acknowledges_nothing():
    """INFO says role:slave: the node that took the save has been demoted, and its writes
    since the promotion go in its resync, whatever else INFO says (here: what a cache that
    never had a replica would say)."""
    info = {"role": "slave", "connected_slaves": 0, "master_replid": NEW, "master_replid2": 0}
    node = Node(replicas=0)
    node.now = NodeReplication.from_info(info)
    assert node.now.primary is False
    wait, _ = policy(node)
    assert wait.wait_now() is False
    with pytest.raises(NotReplicated, match="no longer the primary"):
        wait.settle(None)
    assert NodeReplication.from_info({**info, "role": "master"}).primary is True


def test_a_cache_without_replicas_acknowledges_and_counts_nothing():
    wait, _ = policy(Node(replicas=0))
    before = counted()
    assert wait.wait_now() is False
    wait.settle(None)
    assert counted() == before


def test_a_worker_that_first_meets_a_promoted_primary_counts_its_saves():
    wait, _ = policy(Node(replicas=0, history=NEW, promoted=True))
    before = counted()
    wait.wait_now()
    wait.settle(None)
    assert counted() == before + 1


def test_on_never_acknowledges_without_a_replica():
    wait, _ = policy(Node(replicas=0, history=NEW, promoted=True), mode="on")
    assert wait.wait_now() is True
    with pytest.raises(NotReplicated):
        wait.settle(0)


def test_off_never_waits_nor_asks():
    node = Node(replicas=1)
    wait, _ = policy(node, mode="off")
    assert wait.wait_now() is False
    wait.settle(None)
    assert node.asked == 0


def test_replicas_that_come_back_are_waited_for_again():
    node = Node(replicas=0, history=NEW, promoted=True)
    wait, _ = policy(node)
    assert wait.wait_now() is False
    node.now = NodeReplication(1, NEW, promoted=True)
    wait.replicas_seen(1)  # the role check (once a second) sees a replica
    assert wait.wait_now() is True


@pytest.mark.parametrize(
    ("replid2", "promoted"),
    # redis-py parses INFO's values: a never-promoted node's 40 zeros arrive as the int 0.
    [(0, False), ("0" * 40, False), ("c" * 40, True), (1234567890, True)],
)
def test_promoted_is_read_from_info_as_redis_py_parses_it(replid2, promoted):
    info = {"connected_slaves": 0, "master_replid": OLD, "master_replid2": replid2}
    assert NodeReplication.from_info(info).promoted is promoted


def test_a_worker_that_never_saw_a_confirmation_still_knows_a_primary_that_lost_its_replica():
    """Not promoted, a replication backlog, no replica: its replica left lately (it may have
    been promoted). A worker that has not saved yet refuses as one that has."""
    node = Node(replicas=0)
    node.now = NodeReplication(0, OLD, promoted=False, replicated=True)
    wait, clock = policy(node)
    assert wait.wait_now() is False
    refused_for_the_grace_then_counted(wait, clock)


def test_only_replicas_in_sync_are_counted_from_info_as_redis_py_parses_it():
    """connected_slaves counts a replica in its full sync, and one that is online but still
    loading what it was sent (it acknowledges nothing until loaded: offset 0, its lag
    growing). Neither can confirm a save: WAIT would fall short on every save until they are
    in sync. One that came online a moment ago (offset 0, lag 0) is in sync."""
    info = {
        "connected_slaves": 4,
        "slave0": {"ip": "10.0.0.1", "port": 6379, "state": "wait_bgsave", "offset": 0},
        "slave1": {"ip": "10.0.0.2", "port": 6379, "state": "online", "offset": 99},
        "slave2": {"ip": "10.0.0.3", "port": 6379, "state": "online", "offset": 0, "lag": 8},
        # Online a moment ago: it acknowledges within a second.
        "slave3": {"ip": "10.0.0.4", "port": 6379, "state": "online", "offset": 0, "lag": 0},
        "master_replid": OLD,
        "master_replid2": 0,
        "repl_backlog_active": 1,
    }
    node = NodeReplication.from_info(info)
    assert (node.replicas, node.syncing) == (2, 2)
    del info["slave1"], info["slave3"]
    info["connected_slaves"] = 2
    node = NodeReplication.from_info(info)
    assert (node.replicas, node.syncing) == (0, 2)


@pytest.mark.parametrize("seen_again_by", ["role check", "new connection"])
def test_a_grace_spent_on_an_old_outage_is_not_spent_for_the_next(seen_again_by):
    """The replica's link dropped once (saves refused for the grace), then came back. An hour
    later the replica is promoted, and this old primary still takes writes: its saves must be
    refused for a whole grace again, not acknowledged at once and lost."""
    node = Node(replicas=1)
    wait, clock = policy(node)
    wait.wait_now()
    wait.settle(1)
    node.now = NodeReplication(0, OLD, promoted=False, replicated=True)  # the link drops
    wait.wait_now()
    with pytest.raises(NotReplicated):
        wait.settle(0)
    node.now = NodeReplication(1, OLD, promoted=False, replicated=True)  # back
    if seen_again_by == "role check":
        wait.replicas_seen(1)
    else:
        wait.node_changed()
    clock.now += 3600
    assert wait.wait_now() is True
    node.now = NodeReplication(0, OLD, promoted=False, replicated=True)  # the failover
    with pytest.raises(NotReplicated):
        wait.settle(0)  # WAIT fell short: INFO says the replica is gone
    assert wait.wait_now() is False
    refused_for_the_grace_then_counted(wait, clock)


@pytest.mark.parametrize("confirmed_before", [True, False])
def test_a_primary_whose_only_replica_is_syncing_is_one_that_lost_its_replica(confirmed_before):
    """Its replica died and a replacement syncs (minutes on ElastiCache), or it is an old
    primary whose replica was just promoted while another still syncs from it: INFO cannot
    tell them apart. So the grace, then saves acknowledged and counted; never waiting on the
    syncing replica for the whole sync."""
    node = Node(replicas=1)
    wait, clock = policy(node)
    if confirmed_before:
        wait.wait_now()
        wait.settle(1)
        wait.replicas_seen(0)  # the role check: the replica is gone
    node.now = NodeReplication(0, OLD, promoted=False, replicated=True, syncing=1)
    assert wait.wait_now() is False
    refused_for_the_grace_then_counted(wait, clock)
