"""Prometheus metrics, the pieces: Redis errors by kind, the port setting, the workers' metrics
directory (refusals by reason: tests/unit/test_refusals.py).

The counts a real gunicorn serves are checked in tests/system/test_metrics.py.
"""

from __future__ import annotations

import os

import pytest
import redis

from app import metrics, metrics_dir
from app.config import ConfigError, Settings
from tests.support import SECRET


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (redis.ConnectionError("refused"), "connection"),
        (redis.AuthenticationError("wrong password"), "auth"),
        (redis.TimeoutError("slow"), "timeout"),
        (redis.ReadOnlyError("READONLY"), "readonly"),
        (redis.exceptions.ClusterDownError("CLUSTERDOWN"), "cluster"),
        (redis.exceptions.TryAgainError("TRYAGAIN"), "cluster"),
        (redis.ResponseError("ERR"), "response"),
        (redis.RedisError("?"), "other"),
    ],
)
def test_redis_errors_map_to_a_fixed_kind(error, kind):
    assert metrics.error_kind(error) == kind
    assert kind in metrics.ERROR_KINDS


@pytest.mark.parametrize(("raw", "port"), [(None, 9090), ("0", 0), ("9100", 9100)])
def test_metrics_port_setting(raw, port):
    env = {"REDIS_HOST": "127.0.0.1", "SECRET_KEY": SECRET}
    if raw is not None:
        env["METRICS_PORT"] = raw
    assert Settings.from_env(env).metrics_port == port


def test_a_bad_metrics_port_stops_start_up():
    with pytest.raises(ConfigError, match="METRICS_PORT"):
        Settings.from_env({"REDIS_HOST": "h", "SECRET_KEY": SECRET, "METRICS_PORT": "70000"})


@pytest.fixture
def fresh_metrics_dir(monkeypatch):
    """metrics_dir as in a process that has not named its directory yet."""
    monkeypatch.setattr(metrics_dir, "_prepared", None)
    monkeypatch.setattr(metrics_dir, "_made", None)
    # Set first, so that monkeypatch records the variable and takes away what prepare() sets:
    # delenv alone records nothing when it is unset, and the name of a directory remove()
    # deleted would reach every later test of this process (and the pytest runs they start).
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "")
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR")


def test_a_named_metrics_directory_is_emptied_once_per_process(fresh_metrics_dir, tmp_path):
    named = tmp_path / "metrics"
    named.mkdir()
    (named / "counter_123.db").write_bytes(b"old run")
    settings = Settings(redis_host="h", secret_key=SECRET, metrics_dir=named)
    assert metrics_dir.prepare(settings) == named
    assert list(named.iterdir()) == []
    assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == str(named)
    # gunicorn reads gunicorn.conf.py again on SIGHUP: the workers' files stay.
    (named / "counter_456.db").write_bytes(b"this run")
    assert metrics_dir.prepare(settings) == named
    assert [p.name for p in named.iterdir()] == ["counter_456.db"]
    metrics_dir.remove()
    assert named.is_dir()


def test_without_a_name_the_directory_is_made_and_removed_at_exit(fresh_metrics_dir):
    made = metrics_dir.prepare(Settings(redis_host="h", secret_key=SECRET))
    try:
        assert made.is_dir()
        assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == str(made)
        if metrics_dir.SHM.is_dir():
            assert made.parent == metrics_dir.SHM
    finally:
        metrics_dir.remove()
    assert not made.exists()
