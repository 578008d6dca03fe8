"""Fixtures around the real Valkey cluster on loopback (``localservers.cluster``).

``valkey_cluster`` is a cluster of 3 primaries and 3 replicas; ``any_valkey`` runs a test once
on a single Valkey and once on the cluster; both offer the same start/stop/client/port.
"""

from __future__ import annotations

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


@pytest.fixture(params=["standalone", "cluster"])
def any_valkey(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Valkey | ValkeyCluster]:
    """A single Valkey, then a cluster: the test runs on each."""
    if request.param == "cluster":
        yield from _running_cluster(tmp_path / "cluster")
    else:
        with running_valkey(tmp_path / "valkey") as server:
            yield server
