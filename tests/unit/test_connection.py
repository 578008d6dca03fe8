"""app/connection.py in-process: the one client policy, and noticing a demoted node.

Against real servers (a cluster, a refused password, an unreachable host, a failover):
tests/system/test_config.py, test_cluster.py and test_redis_faults.py.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app import connection
from app.config import Settings


def test_every_client_has_bounded_timeouts_and_retries_dropped_connections(
    settings: Settings,
) -> None:
    client = connection.connect(replace(settings, redis_db=3), socket_timeout=2.0)
    options = client.connection_pool.connection_kwargs
    assert options["db"] == 3
    assert options["socket_connect_timeout"] == connection.CONNECT_TIMEOUT_SECONDS
    assert options["socket_timeout"] == 2.0  # an override wins over the policy
    assert options["health_check_interval"] == connection.HEALTH_CHECK_INTERVAL_SECONDS
    retry = client.get_retry()
    assert retry is not None and retry.get_retries() == connection.RETRIES
    # A reset connection or a stuck server is retried; a refused command is not.
    errors = tuple(options["retry_on_error"])
    assert issubclass(RedisConnectionError, errors) and issubclass(RedisTimeoutError, errors)
    assert not issubclass(ResponseError, errors)


class Node:
    """Stands in for a client: answers ROLE as told, counting the questions."""

    def __init__(self, answer: object) -> None:
        self.answer = answer
        self.asked = 0

    def execute_command(self, *args: str) -> object:
        assert args == ("ROLE",)
        self.asked += 1
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def test_a_demoted_node_is_noticed_at_most_once_a_second(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [100.0]
    monkeypatch.setattr(connection.time, "monotonic", lambda: now[0])
    watch = connection.RoleWatch()
    node = Node([b"master", 0, []])
    assert watch.demoted(node) is False
    node.answer = [b"slave", "127.0.0.1", 6380, "connected", 0]
    assert watch.demoted(node) is False  # asked a moment ago: not again yet
    assert node.asked == 1
    now[0] += connection.ROLE_CHECK_SECONDS
    assert watch.demoted(node) is True
    watch.due_now()  # a failover was seen elsewhere: ask at once
    assert watch.demoted(node) is True
    assert node.asked == 3


def test_a_server_refusing_role_is_named_once_then_left_alone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    watch = connection.RoleWatch()
    node = Node(ResponseError("unknown command 'ROLE'"))
    with caplog.at_level(logging.WARNING, logger="app.connection"):
        assert watch.demoted(node) is False
        watch.due_now()
        assert watch.demoted(node) is False
    assert node.asked == 1
    assert [r.getMessage() for r in caplog.records] == [
        "the server refuses ROLE (unknown command 'ROLE'): failovers are noticed later"
    ]


def test_a_cluster_needs_no_role_check() -> None:
    node = Node([b"slave"])
    assert connection.RoleWatch(enabled=False).demoted(node) is False
    assert node.asked == 0
