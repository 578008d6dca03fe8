"""app/connection.py in-process: the one client policy, and which error replies mean "never" (a
feature is switched off) and which are trouble of the moment (asked again later).

Against real servers (a cluster, a refused password, an unreachable host, a failover):
tests/system/test_config.py, test_cluster.py and test_redis_faults.py.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoPermissionError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app import connection
from app.config import Settings
from app.connection import refused


def test_every_client_has_bounded_timeouts_and_retries_dropped_connections_only(
    settings: Settings,
) -> None:
    client = connection.connect(replace(settings, redis_db=3), socket_timeout=2.0)
    options = client.connection_pool.connection_kwargs
    assert options["db"] == 3
    assert options["socket_connect_timeout"] == connection.CONNECT_TIMEOUT_SECONDS
    assert options["socket_timeout"] == 2.0  # an override wins over the policy
    assert options["health_check_interval"] == connection.HEALTH_CHECK_INTERVAL_SECONDS
    # A reset connection is retried; a stuck server (a timeout) is not, since each retry would
    # reconnect and wait again; a refused command is not either.
    retry = client.connection_pool.make_connection().retry
    for error, attempts in (
        (RedisConnectionError("reset"), connection.RETRIES + 1),
        (RedisTimeoutError("stuck"), 1),
        (ResponseError("ERR refused"), 1),
    ):
        made: list[int] = []

        def attempt(error: Exception = error, made: list[int] = made) -> None:
            made.append(1)
            raise error

        with pytest.raises(type(error)):
            retry.call_with_retry(attempt, lambda _: None)
        assert len(made) == attempts, error


@pytest.mark.parametrize(
    ("error", "is_refusal"),
    [
        (redis.ResponseError("unknown command 'ROLE', with args beginning with: "), True),
        (redis.ResponseError("ERR unknown command 'wait'"), True),
        (redis.ResponseError("unknown subcommand 'TRACKING'. Try CLIENT HELP."), True),
        (NoPermissionError("this user has no permissions to run 'client|tracking'"), True),
        (redis.ResponseError("BUSY Valkey is busy running a script."), False),
        (redis.BusyLoadingError("Valkey is loading the dataset in memory"), False),
        (redis.TimeoutError("Timeout reading from socket"), False),
        (redis.ConnectionError("Connection refused"), False),
        (redis.ResponseError("WRONGTYPE Operation against a key"), False),
    ],
)
def test_only_unknown_or_forbidden_commands_are_refusals(error, is_refusal):
    assert refused(error) is is_refusal
