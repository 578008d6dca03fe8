"""The guarded client in-process (app/redis_client.py): a demoted node is left at once. The
circuit: tests/unit/test_circuit.py and test_errors.py; failovers against real servers:
tests/system/test_redis_faults.py."""

from __future__ import annotations

import functools
import threading
from typing import Any
from unittest import mock

import fakeredis
from redis.cluster import ClusterNode, RedisCluster

from app.connection import MadeOnFirstUse
from app.redis_client import RedisClient, SlotMaps
from localservers.waits import wait_until


class Replica(fakeredis.FakeRedis):
    """A node that now answers ROLE as a replica (fakeredis knows no ROLE)."""

    def execute_command(self, *args: Any, **options: Any) -> Any:
        if args and args[0] == "ROLE":
            return ["slave", "10.0.0.1", 6379, "connected", 0]
        return super().execute_command(*args, **options)


def test_a_read_from_a_demoted_node_first_drops_every_connection(fake_server, monkeypatch):
    redis_client = RedisClient(
        fakeredis.FakeRedis(server=fake_server),
        functools.partial(Replica, server=fake_server),
        cache=None,
    )
    resets = []
    monkeypatch.setattr(redis_client, "reset", lambda: resets.append(1))
    assert redis_client.read("session:{x}", lambda fields: None) is None
    assert resets == [1]  # the next connection goes through the endpoint, to the new primary


def test_a_slot_map_reload_runs_off_the_thread_that_asks_for_it():
    """A request that met a failed cluster node answers at once: the reload (which asks nodes
    that may be frozen, a socket timeout each) runs in SlotMaps' own thread, the failed node
    asked last."""
    asked: list[tuple[threading.Thread, str | None]] = []
    release = threading.Event()

    class Nodes:
        def initialize(self, additional_startup_nodes_info: Any, last_failed_node_name: Any):
            asked.append((threading.current_thread(), last_failed_node_name))
            release.wait(5)  # as a reload asking a frozen node would

    client = mock.create_autospec(RedisCluster, instance=True)
    client.get_nodes.return_value = [ClusterNode("127.0.0.1", 7001)]
    client.nodes_manager = Nodes()
    SlotMaps(MadeOnFirstUse(lambda: client)).reload("127.0.0.1:7001")
    try:
        wait_until(lambda: bool(asked), 5, "the reload")
        assert asked == [(asked[0][0], "127.0.0.1:7001")]
        assert asked[0][0] is not threading.current_thread()
    finally:
        release.set()
