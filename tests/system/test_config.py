"""A bad configuration stops a real gunicorn in one line; a real Valkey that contradicts the
configured mode stops start-up. Reading the settings: tests/unit/test_config.py.
"""

from __future__ import annotations

import pytest

from app.config import ConfigError, Settings
from app.connection import check_server
from localservers.gunicorn import Gunicorn

BASE = {"REDIS_HOST": "redis.internal", "SECRET_KEY": "s" * 32}


def test_gunicorn_refuses_to_start_with_one_line(tmp_path):
    env = {"PATH": "/usr/bin:/bin", **BASE, "REDIS_PORT": "not-a-port"}
    result = Gunicorn("refused", env, tmp_path / "gunicorn.log")
    assert result.refused() != 0
    assert result.log().strip().splitlines() == [
        "configuration error: REDIS_PORT='not-a-port' is not a whole number (1-65535)"
    ]


def test_a_mode_the_server_contradicts_stops_start_up(valkey):
    one = {**BASE, "REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(valkey.port)}
    assert check_server(Settings.from_env(one)) is False
    assert check_server(Settings.from_env({**one, "REDIS_CLUSTER": "false"})) is False
    with pytest.raises(ConfigError, match=r"REDIS_CLUSTER=true, but Redis at .* is not a cluster"):
        check_server(Settings.from_env({**one, "REDIS_CLUSTER": "true"}))
