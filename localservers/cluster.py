"""A real Valkey cluster on loopback (3 primaries, 3 replicas), for the benchmark and the tests.

Six of the kit's ``Valkey`` servers in cluster mode, formed without valkey-cli: slots are
assigned with CLUSTER ADDSLOTSRANGE, the nodes introduced with CLUSTER MEET and the replicas
attached with CLUSTER REPLICATE. It offers the same start/stop/port/client/cpu_seconds as a
single ``Valkey``, so a caller can take either.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import redis
from redis.cluster import RedisCluster

from localservers import HOST
from localservers.ports import free_port
from localservers.valkey import Valkey
from localservers.waits import wait_until

SLOT_RANGES = ((0, 5460), (5461, 10922), (10923, 16383))
# Long enough that a loaded machine does not fail over on its own (a node is deemed down after
# this long without an answer), short enough that a restarted cluster is whole again within
# seconds.
NODE_TIMEOUT_MS = 5000


class ClusterNode(Valkey):
    """One node: a Valkey in cluster mode, with its cluster bus on a port of its own.

    ``durable`` keeps an append-only file, so a node stopped and started again has its data
    (the tests' outages); the benchmark turns it off, as for its single Valkey, to keep disk
    I/O out of the figures. Its client answers str, as the cluster commands are read as text.
    """

    def __init__(self, data_dir: Path, durable: bool = True) -> None:
        super().__init__(
            data_dir,
            appendonly="yes" if durable else "no",
            cluster_enabled="yes",
            cluster_config_file="nodes.conf",
            cluster_node_timeout=str(NODE_TIMEOUT_MS),
        )
        # Not port + 10000, the default: that can pass 65535.
        self.config["cluster-port"] = str(free_port())

    def _move(self) -> None:
        super()._move()
        self.config["cluster-port"] = str(free_port())

    @property
    def bus_port(self) -> int:
        return int(self.config["cluster-port"])

    def client(self, **options: Any) -> redis.Redis:
        return super().client(decode_responses=True, **options)

    def node_id(self) -> str:
        return self.client().execute_command("CLUSTER", "MYID")

    def role(self) -> str:
        return self.client().execute_command("ROLE")[0]


class ValkeyCluster:
    """Six nodes; the first three start as primaries, each of the others replicates one.

    The nodes' ports come from ``free_port`` (outside the kernel's ephemeral range), so a node
    stopped and started again finds its port free.
    """

    def __init__(self, data_dir: Path, durable: bool = True) -> None:
        self.nodes = [ClusterNode(data_dir / f"node-{i}", durable) for i in range(6)]
        self._formed = False

    @property
    def port(self) -> int:
        """The port the app is given: any node will do, as with a configuration endpoint."""
        return self.nodes[0].port

    def start(self) -> None:
        """Start the six nodes at once (each waits for its own PONG), form the cluster the
        first time, and return once it is whole."""
        self._each(ClusterNode.start)
        if not self._formed:
            self._form()
            self._formed = True
        self.wait_healthy()

    def stop(self) -> None:
        self._each(ClusterNode.stop)

    def _each(self, action: Callable[[ClusterNode], None]) -> None:
        """``action`` on every node, side by side: six starts or stops one after another add up
        to seconds for every cluster a test starts."""
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            list(pool.map(action, self.nodes))

    def client(self) -> RedisCluster:
        return RedisCluster(host=HOST, port=self.port)

    def primaries(self) -> list[ClusterNode]:
        return [node for node in self.nodes if node.role() == "master"]

    def cpu_seconds(self) -> float:
        """CPU time of all six nodes: the replicas apply every write too."""
        return sum(node.cpu_seconds() for node in self.nodes if node.pid is not None)

    def _form(self) -> None:
        primaries, replicas = self.nodes[:3], self.nodes[3:]
        for node, (first, last) in zip(primaries, SLOT_RANGES, strict=True):
            node.client().execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
        introducer = self.nodes[0].client()
        for node in self.nodes[1:]:
            introducer.execute_command("CLUSTER", "MEET", HOST, node.port, node.bus_port)

        ids = {node.node_id() for node in self.nodes}

        def all_met() -> bool:
            # By their own ids: a node still in its handshake is listed under a made-up id,
            # and a REPLICATE naming the real one then answers "Unknown node" (seen under load).
            return all(
                {
                    line.split()[0]
                    for line in n.client().execute_command("CLUSTER", "NODES").splitlines()
                    if line.strip()
                }
                == ids
                for n in self.nodes
            )

        wait_until(all_met, 20, "every node to know the other five by their ids")
        for primary, replica in zip(primaries, replicas, strict=True):
            replica.client().execute_command("CLUSTER", "REPLICATE", primary.node_id())

    def wait_healthy(self, timeout: float = 30) -> None:
        """Every node sees every slot served, and every replica is in sync with its primary."""

        def healthy() -> bool:
            try:
                for node in self.nodes:
                    client = node.client()
                    if client.info("cluster").get("cluster_enabled") != 1:
                        return False
                    if "cluster_state:ok" not in client.execute_command("CLUSTER", "INFO"):
                        return False
                    replication = client.info("replication")
                    if replication["role"] == "slave" and (
                        replication.get("master_link_status") != "up"
                    ):
                        return False
                return len(self.primaries()) == 3
            except redis.RedisError:
                return False

        wait_until(healthy, timeout, "the cluster to be whole (cluster_state:ok, replicas up)")

    def primary_for(self, key: str) -> ClusterNode:
        slot = self.nodes[0].client().execute_command("CLUSTER", "KEYSLOT", key)
        return self.node_for_slot(int(slot))

    def node_for_slot(self, slot: int) -> ClusterNode:
        """The primary serving ``slot``, as the cluster itself reports it."""
        for first, last, owner, *_ in self.nodes[0].client().execute_command("CLUSTER", "SLOTS"):
            if first <= slot <= last:
                return next(n for n in self.nodes if n.port == int(owner[1]))
        raise AssertionError(f"no primary serves slot {slot}")

    def replica_of(self, primary: ClusterNode) -> ClusterNode:
        for node in self.nodes:
            replication = node.client().info("replication")
            if replication["role"] == "slave" and int(replication["master_port"]) == primary.port:
                return node
        raise AssertionError(f"no replica of the primary on port {primary.port}")
