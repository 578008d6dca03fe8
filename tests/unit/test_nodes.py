"""A node's session connection in-process (app/nodes.py): how often it asks the node's role,
and a server refusing ROLE. Demotion followed end to end: tests/system/test_redis_faults.py."""

from __future__ import annotations

import logging

import pytest
from redis.exceptions import ResponseError

from app import nodes
from app.nodes import NodeConnection, Role
from app.read_cache import ReadCache, StoredSession


class Node:
    """Stands in for a node's client: answers ROLE as told, counting the questions."""

    def __init__(self, answer: object) -> None:
        self.answer = answer
        self.asked = 0

    def execute_command(self, *args: str) -> object:
        assert args == ("ROLE",)
        self.asked += 1
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def connection_to(node: Node) -> NodeConnection:
    return NodeConnection("primary", lambda **options: node, cache=None)  # type: ignore[arg-type]


def test_a_replica_that_has_acknowledged_nothing_yet_is_not_counted_in_sync() -> None:
    """ROLE lists a replica still loading what it was sent (acknowledged offset 0), which cannot
    confirm a save, as INFO replication does (app/replication.py)."""
    node = Node(["master", 500, [["10.0.0.2", "6379", "480"], ["10.0.0.3", "6379", "0"]]])
    assert connection_to(node).role() == Role(primary=True, replicas=1)


def test_the_role_is_asked_at_most_once_a_second(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(nodes.time, "monotonic", lambda: now[0])
    node = Node(["master", 0, [["10.0.0.2", "6379", "123"]]])
    connection = connection_to(node)
    assert connection.role_due()
    assert connection.role() == Role(primary=True, replicas=1)
    assert not connection.role_due()  # asked a moment ago: not again yet
    now[0] += nodes.ROLE_CHECK_SECONDS
    assert connection.role_due()
    node.answer = ["slave", "10.0.0.2", 6379, "connected", 0]
    assert connection.role() == Role(primary=False, replicas=0)
    connection.check_role_now()  # a new connection: ask at once
    assert connection.role_due()
    assert node.asked == 2


def test_a_server_refusing_role_is_named_once_then_left_alone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    node = Node(ResponseError("unknown command 'ROLE'"))
    connection = connection_to(node)
    with caplog.at_level(logging.WARNING, logger="app.nodes"):
        assert connection.role() is None
        connection.check_role_now()
        assert not connection.role_due()
    assert node.asked == 1
    assert [r.getMessage() for r in caplog.records] == [
        "the server refuses ROLE (unknown command 'ROLE'): failovers are noticed later"
    ]


def test_a_busy_server_is_asked_again_at_the_next_check(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(nodes.time, "monotonic", lambda: now[0])
    node = Node(ResponseError("BUSY Valkey is busy running a script."))
    connection = connection_to(node)
    with pytest.raises(ResponseError):
        connection.role()
    now[0] += nodes.ROLE_CHECK_SECONDS
    assert connection.role_due()  # not switched off: trouble of the moment
    node.answer = ["master", 0, []]
    assert connection.role() == Role(primary=True, replicas=0)


def test_a_closed_connection_empties_the_shared_cache_once_not_on_every_request() -> None:
    """On a cluster, a worker's nodes share one read cache. A node whose connection closed
    empties it (nothing keeps its copies fresh), once: every request routed to that node while
    it stays down drained it again, and emptied the other nodes' good copies each time (found
    by review)."""
    cache = ReadCache(1 << 20)
    down = NodeConnection("down", lambda **options: Node(["master", 0, []]), cache=cache)  # type: ignore[arg-type]
    session = StoredSession({}, ("hi",), 10)
    cache.put("theirs", "other", session)
    down.drain()  # never connected: nothing of its own was cached
    assert cache.get("theirs", "other") == session
    down.disconnect()
    cache.put("theirs", "other", session)
    for _ in range(3):
        down.drain()  # a request routed to it, its circuit open: no reconnect
        assert cache.get("theirs", "other") == session
