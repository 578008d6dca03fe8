"""A bad configuration stops a real gunicorn in one line; a real Valkey that contradicts the
configured mode stops start-up. Reading the settings: tests/unit/test_config.py.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from app.config import ConfigError, Settings
from app.connection import check_server
from tests.support import REPO_ROOT

BASE = {"REDIS_HOST": "redis.internal", "SECRET_KEY": "s" * 32}


def test_gunicorn_refuses_to_start_with_one_line():
    env = {"PATH": "/usr/bin:/bin", **BASE, "REDIS_PORT": "not-a-port"}
    result = subprocess.run(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "app:create_app()"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "configuration error: REDIS_PORT='not-a-port' is not a whole number (1-65535)"
    ]


def test_a_mode_the_server_contradicts_stops_start_up(valkey):
    one = {**BASE, "REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(valkey.port)}
    assert check_server(Settings.from_env(one)) is False
    assert check_server(Settings.from_env({**one, "REDIS_CLUSTER": "false"})) is False
    with pytest.raises(ConfigError, match=r"REDIS_CLUSTER=true, but Redis at .* is not a cluster"):
        check_server(Settings.from_env({**one, "REDIS_CLUSTER": "true"}))
