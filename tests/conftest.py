"""Shared fixtures: settings, a fakeredis-backed app, a real Valkey, real gunicorn replicas.

Every server a test starts listens on 127.0.0.1 and is stopped by PID when the test ends.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import fakeredis
import pytest

from app import create_app
from app.config import Settings

from .cluster import any_valkey, valkey_cluster  # noqa: F401 (fixtures for every module)
from .support import SECRET, Replica, Valkey, replica_env, start_gunicorn

# Tests that build, lint or deploy for real, or drive whole processes: `pytest -m "not slow"`
# leaves them out and runs the unit tests (fakeredis, the app in-process) in seconds.
SYSTEM_MODULES = frozenset(
    {
        "test_bench",
        "test_browser",
        "test_cfn",
        "test_cfn_observability",
        "test_ci_guard",
        "test_image",
        "test_k8s",
        "test_k8s_metrics",
        "test_main",
        "test_redis_faults",
        "test_redis_tls",
        "test_replicas",
        "test_style",
        "test_verify",
    }
)
# A test that asks for one of these starts a real server.
REAL_SERVER_FIXTURES = frozenset({"valkey", "start_replica", "real_settings"})


# Every test of these folders runs real tools (tests/scripts: the AWS CLI against moto).
SYSTEM_FOLDERS = frozenset({"scripts"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        package, _, module = item.module.__name__.rpartition(".") if item.module else ("", "", "")
        folder = package.rpartition(".")[2]
        real = module in SYSTEM_MODULES or folder in SYSTEM_FOLDERS
        if real or REAL_SERVER_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.slow)


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """In CI (CI=true) a skipped test is a failed one: CI installs every tool the suite
    needs, so a skip there means a check silently did not run."""
    outcome = yield
    report = outcome.get_result()
    if _in_ci() and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where nothing may be skipped: {reason}"


def pytest_sessionfinish(session: pytest.Session) -> None:
    """The same for skips the hook above cannot see (a whole module skipped at collection)."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if _in_ci() and skipped and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture
def settings() -> Settings:
    return Settings(
        redis_host="127.0.0.1",
        redis_port=6379,
        redis_tls=False,
        redis_auth_token=None,
        redis_db=0,
        redis_client_cache=False,
        secret_key=SECRET,
        session_lifetime_seconds=1800,
        session_cookie_secure=False,
        message_max_length=2000,
        messages_max_per_session=500,
        log_level="INFO",
        replica_name="test-replica",
        # Tests save far faster than a person; the limits have tests of their own.
        rate_limit_saves="off",
        rate_limit_new_sessions="off",
    )


@pytest.fixture
def fake_redis() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis(server=fakeredis.FakeServer())


@pytest.fixture
def app(settings: Settings, fake_redis: fakeredis.FakeRedis):
    return create_app(settings, redis_client=fake_redis)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def make_app(settings: Settings, fake_redis: fakeredis.FakeRedis):
    """An app with some settings changed, on the same fake Redis."""

    def make(**changes):
        return create_app(replace(settings, **changes), redis_client=fake_redis)

    return make


@pytest.fixture
def valkey(tmp_path: Path) -> Iterator[Valkey]:
    server = Valkey(tmp_path / "valkey")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def start_replica(tmp_path: Path) -> Iterator[Callable[..., Replica]]:
    """Start gunicorn with the production config on loopback; every one is stopped at the end."""
    started: list[Replica] = []

    def start(valkey_port: int, name: str = "replica", **env: str) -> Replica:
        log_path = tmp_path / f"{name}-{len(started)}.log"
        replica = start_gunicorn(name, replica_env(valkey_port, name, **env), log_path)
        started.append(replica)
        return replica

    yield start
    for replica in started:
        replica.stop()
