"""Which error replies mean "never" (a feature is switched off) and which are trouble of the
moment (asked again later): app/connection.refused."""

from __future__ import annotations

import pytest
import redis
from redis.exceptions import NoPermissionError

from app.connection import refused


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
