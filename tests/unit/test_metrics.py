"""Prometheus metrics, the pieces: Redis errors by kind, refusal reasons, the port setting.

The counts a real gunicorn serves are checked in tests/system/test_metrics.py.
"""

from __future__ import annotations

import pytest
import redis

from app import metrics
from app.config import ConfigError, Settings
from tests.support import SECRET


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (redis.ConnectionError("refused"), "connection"),
        (redis.AuthenticationError("wrong password"), "auth"),
        (redis.TimeoutError("slow"), "timeout"),
        (redis.ReadOnlyError("READONLY"), "readonly"),
        (redis.ResponseError("ERR"), "response"),
        (redis.RedisError("?"), "other"),
    ],
)
def test_redis_errors_map_to_a_fixed_kind(error, kind):
    assert metrics.error_kind(error) == kind
    assert kind in metrics.ERROR_KINDS


def test_an_unknown_refusal_reason_is_a_programming_error():
    with pytest.raises(KeyError):
        metrics.refused("made-up reason")


@pytest.mark.parametrize(("raw", "port"), [(None, 9090), ("0", 0), ("9100", 9100)])
def test_metrics_port_setting(raw, port):
    env = {"REDIS_HOST": "127.0.0.1", "SECRET_KEY": SECRET}
    if raw is not None:
        env["METRICS_PORT"] = raw
    assert Settings.from_env(env).metrics_port == port


def test_a_bad_metrics_port_stops_start_up():
    with pytest.raises(ConfigError, match="METRICS_PORT"):
        Settings.from_env({"REDIS_HOST": "h", "SECRET_KEY": SECRET, "METRICS_PORT": "70000"})
