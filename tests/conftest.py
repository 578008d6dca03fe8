"""Shared fixtures: settings, a fakeredis-backed app, a real Valkey, real gunicorn replicas.

Every server a test starts listens on 127.0.0.1 and is stopped by PID when the test ends.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import fakeredis
import pytest
import requests

from app import create_app
from app.config import Settings

from .cluster import any_valkey, valkey_cluster  # noqa: F401 (fixtures for every module)
from .support import ROOT, SECRET, Replica, Valkey, free_port, replica_env, wait_until


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
    """Start `gunicorn -c gunicorn.conf.py 'app:create_app()'` (as in production) on loopback."""
    started: list[Replica] = []

    def start(valkey_port: int, name: str = "replica", **env: str) -> Replica:
        port = free_port()
        log_path = tmp_path / f"{name}-{port}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "gunicorn",
                    "-c",
                    "gunicorn.conf.py",
                    "--bind",
                    f"127.0.0.1:{port}",
                    "app:create_app()",
                ],
                cwd=ROOT,
                env=replica_env(valkey_port, name, **env),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        replica = Replica(name, port, process, log_path)
        started.append(replica)

        def ready() -> bool:
            assert process.poll() is None, f"gunicorn exited:\n{replica.log()}"
            try:
                return requests.get(f"{replica.url}/healthz", timeout=1).status_code == 200
            except (requests.ConnectionError, requests.Timeout):  # no worker has booted yet
                return False

        wait_until(ready, 20, f"gunicorn {name} to answer /healthz")
        return replica

    yield start
    for replica in started:
        replica.stop()
