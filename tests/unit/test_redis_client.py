"""The guarded client in-process (app/redis_client.py): a demoted node is left at once. The
circuit: tests/unit/test_circuit.py and test_errors.py; failovers against real servers:
tests/system/test_redis_faults.py."""

from __future__ import annotations

import functools
from typing import Any

import fakeredis

from app.redis_client import RedisClient


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
