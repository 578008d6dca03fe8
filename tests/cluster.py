"""Fixtures around the real Valkey cluster on loopback that bench/cluster.py builds.

``valkey_cluster`` is a cluster of 3 primaries and 3 replicas; ``any_valkey`` runs a test once
on a single Valkey and once on the cluster; both offer the same start/stop/client/port. The
nodes take their ports from the tests' ``free_port`` (outside the ephemeral range), so a node
stopped by a test starts again on its port.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.cluster import ValkeyCluster

from .support import Valkey, free_port


@pytest.fixture
def valkey_cluster(tmp_path: Path) -> Iterator[ValkeyCluster]:
    cluster = ValkeyCluster(tmp_path / "cluster", free_port)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(params=["standalone", pytest.param("cluster", marks=pytest.mark.slow)])
def any_valkey(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Valkey | ValkeyCluster]:
    """A single Valkey, then a cluster: the test runs on each."""
    server: Valkey | ValkeyCluster
    if request.param == "cluster":
        server = ValkeyCluster(tmp_path / "cluster", free_port)
    else:
        server = Valkey(tmp_path / "valkey")
    try:
        server.start()
        yield server
    finally:
        server.stop()
