"""Fixtures around the real Valkey cluster on loopback (``localservers.cluster``).

``valkey_cluster`` is a cluster of 3 primaries and 3 replicas; ``any_valkey`` runs a test once
on a single Valkey and once on the cluster; both offer the same start/stop/client/port.
``shared_cluster`` and ``shared_any_valkey`` are the same once per module, ``flushed`` empties
them between tests.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from localservers.cluster import ValkeyCluster
from localservers.valkey import Valkey, running_valkey


def _running_cluster(data_dir: Path) -> Iterator[ValkeyCluster]:
    cluster = ValkeyCluster(data_dir)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def valkey_cluster(tmp_path: Path) -> Iterator[ValkeyCluster]:
    yield from _running_cluster(tmp_path / "cluster")


def _running(kind: str, data_dir: Path) -> Iterator[Valkey | ValkeyCluster]:
    if kind == "cluster":
        yield from _running_cluster(data_dir / "cluster")
    else:
        with running_valkey(data_dir / "valkey") as server:
            yield server


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ValkeyCluster]:
    """``valkey_cluster`` for a whole module, for tests that leave it as they found it but for
    their keys (``flushed`` before each); a test that fails over, moves slots or changes users
    takes ``valkey_cluster``."""
    yield from _running_cluster(tmp_path_factory.mktemp("cluster"))


@pytest.fixture(params=["standalone", "cluster"])
def any_valkey(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Valkey | ValkeyCluster]:
    """A single Valkey, then a cluster: the test runs on each."""
    yield from _running(request.param, tmp_path)


@pytest.fixture(scope="module", params=["standalone", "cluster"])
def shared_any_valkey(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Valkey | ValkeyCluster]:
    """``any_valkey`` for a whole module, for module-scoped servers on it: for tests that leave
    it as they found it (no stop, no failover, no slot moved, no ACL change) but for their keys,
    which ``flushed`` removes before each."""
    yield from _running(request.param, tmp_path_factory.mktemp(request.param))


def flushed(server: Valkey | ValkeyCluster) -> Valkey | ValkeyCluster:
    """``server`` with every key deleted (on a cluster, on every primary): a shared server as
    new to the next test."""
    with contextlib.closing(server.client()) as client:
        client.flushall()
    return server
