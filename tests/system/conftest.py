"""The system layer: real servers on loopback (Valkey, a Valkey cluster, gunicorn, haproxy,
nginx, Chromium) and the processes that drive them (``python -m app``, ``ops.verify``, the
benchmark).

Every test here is marked ``system`` and ``slow`` (``pytest -m "not slow"`` leaves it out).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import pytest

from localservers.gunicorn import Gunicorn, start_gunicorn, stop_together
from tests.support import mark_layer, replica_env, server_log_sections

from .cluster import (  # noqa: F401 (fixtures for every module here)
    any_valkey,
    shared_any_valkey,
    shared_cluster,
    valkey_cluster,
)
from .tls import tls_redis, trusts_the_test_ca  # noqa: F401 (fixtures for every module here)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    mark_layer(items, Path(__file__).parent, pytest.mark.system, pytest.mark.slow)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed test's report ends with the tail of each server log it used (support.py says
    why)."""
    report = yield
    if report.failed:
        report.sections.extend(server_log_sections(item))
    return report


@pytest.fixture
def start_replica(tmp_path: Path) -> Iterator[Callable[..., Gunicorn]]:
    """Start gunicorn with the production config on loopback; all are stopped together at the
    end."""
    started: list[Gunicorn] = []

    def start(valkey_port: int, name: str = "replica", **env: str) -> Gunicorn:
        log_path = tmp_path / f"{name}-{len(started)}.log"
        replica = start_gunicorn(name, replica_env(valkey_port, name, **env), log_path)
        started.append(replica)
        return replica

    yield start
    stop_together(started)
