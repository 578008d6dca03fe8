"""Capacity check: can the cluster the templates create run what the manifests ask for?

Computed offline from cfn/ (compute mode, instance type, node counts, add-ons) and the rendered
k8s/ (replicas, rollout surge, the HPA's maximum, per-pod requests of every container, the spread
constraints), the way the scheduler decides it: pods per node from the instance type's ENI limit (or
Auto Mode's prefix delegation), CPU and memory requests against allocatable, the DaemonSet and
cluster add-on pods that take their share first, and `DoNotSchedule` spread over nodes. With a fixed
node count (no node autoscaler) whatever does not fit stays Pending; with EKS Auto Mode a node is
launched for pods that fit nowhere.

Hand-written, not a library: no offline tool simulates the scheduler against EKS's node shapes.
The instance figures below are AWS's published ones (amazon-eks-ami `eni-max-pods.txt`, the EC2
instance types page) and the reservation formula the EKS AMIs use for kube-reserved and eviction.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml
from kubernetes.utils import parse_quantity

from tests.support import FIXTURES, REPO_ROOT

from .cfn import load_path


@dataclass(frozen=True)
class InstanceType:
    """What the scheduler sees of one node: vCPUs, memory (MiB), pods the kubelet admits."""

    vcpus: int
    memory_mib: int
    eni_max_pods: int


INSTANCE_TYPES = {
    "t3.micro": InstanceType(2, 1024, 4),
    "t3.small": InstanceType(2, 2048, 11),
    "t3.medium": InstanceType(2, 4096, 17),
    "m5.large": InstanceType(2, 8192, 29),
    "c5.large": InstanceType(2, 4096, 29),
}
# Auto Mode's built-in general-purpose pool launches on-demand amd64 c/m/r instances of generation 5
# or newer; c5.large is the smallest it may pick, so the check plans with it (worst case). Auto Mode
# assigns /28 prefixes to the nodes (prefix delegation), so the kubelet's 110 pods is the limit.
AUTO_MODE_SMALLEST = "c5.large"
AUTO_MODE_MAX_PODS = 110
# Requests of the pods EKS runs on each node of a managed node group (aws-node, kube-proxy) and once
# per cluster (CoreDNS x2; metrics-server x2 when its add-on is declared). Auto Mode runs the CNI,
# kube-proxy and CoreDNS inside the node, and its add-ons on the separate `system` pool.
NODE_GROUP_DAEMONSETS = [(25, 0), (100, 0)]  # (millicores, MiB)
COREDNS = [(100, 70)] * 2
METRICS_SERVER = [(100, 200)] * 2
# Requests of the amazon-cloudwatch-observability add-on's pods on every Linux node (the chart the
# add-on installs, aws-observability/helm-charts, values.yaml: agent 250m/128Mi, Fluent Bit
# 50m/25Mi; its GPU and Neuron exporters run only on those instance types). Auto Mode counts
# DaemonSets when it sizes a node, so they cost room on every node, not Pending pods.
CLOUDWATCH_DAEMONSETS = [(250, 128), (50, 25)]


def allocatable(instance: InstanceType, max_pods: int) -> tuple[int, int]:
    """(millicores, MiB) left for pods after the EKS AMIs' kube-reserved and 100 MiB eviction."""
    cpu_reserved = 60 + (10 if instance.vcpus >= 2 else 0) + 5 * max(0, min(instance.vcpus, 4) - 2)
    cpu_reserved += 2.5 * max(0, instance.vcpus - 4)
    memory_reserved = 255 + 11 * max_pods + 100
    return instance.vcpus * 1000 - int(cpu_reserved), instance.memory_mib - memory_reserved


@dataclass
class Node:
    cpu: int
    memory: int
    pods: int
    app_pods: int = 0

    def fits(self, cpu: int, memory: int) -> bool:
        return self.pods >= 1 and self.cpu >= cpu and self.memory >= memory

    def take(self, cpu: int, memory: int, *, app: bool = False) -> None:
        self.cpu, self.memory, self.pods = self.cpu - cpu, self.memory - memory, self.pods - 1
        self.app_pods += app


@dataclass
class Cluster:
    """The compute the templates create, as the scheduler would see it."""

    mode: str
    instance: str
    max_pods: int
    fixed_nodes: int | None  # None: nodes are added for pending pods (Auto Mode)
    system_pods_per_node: list[tuple[int, int]] = field(default_factory=list)
    cluster_pods: list[tuple[int, int]] = field(default_factory=list)
    # Nodes the app's pods do not tolerate: Auto Mode's system pool taints its nodes
    # CriticalAddonsOnly, and the add-ons it runs keep one up.
    tainted_nodes: int = 0

    def new_node(self) -> Node:
        cpu, memory = allocatable(INSTANCE_TYPES[self.instance], self.max_pods)
        node = Node(cpu, memory, self.max_pods)
        for request in self.system_pods_per_node:
            node.take(*request)
        return node


@dataclass
class Demand:
    """The app's pods at their peak: the HPA's maximum during a rollout (plus its surge)."""

    replicas: int
    hpa_max: int
    surge: int
    cpu: int
    memory: int
    node_skew: int | None  # maxSkew of a DoNotSchedule spread over kubernetes.io/hostname
    # That spread's nodeTaintsPolicy is Honor: a node whose taint the pod does not tolerate is
    # no domain of it (Kubernetes' default, Ignore, counts it, with its 0 app pods).
    taints_honored: bool = False

    @property
    def peak(self) -> int:
        return self.hpa_max + self.surge


@dataclass
class Report:
    mode: str
    nodes: int
    placed: int
    needed: int

    @property
    def fits(self) -> bool:
        return self.placed >= self.needed

    def __str__(self) -> str:
        return (
            f"{self.mode}: {self.placed} of {self.needed} app pods scheduled on {self.nodes} nodes"
            f" ({self.needed - self.placed} Pending)"
        )


def _param_default(main: dict[str, Any], value: Any) -> Any:
    if isinstance(value, dict) and "Ref" in value:
        return main["Parameters"][value["Ref"]]["Default"]
    return value


def cluster_from_templates(
    eks: dict[str, Any], main: dict[str, Any], observability: dict[str, Any] | None = None
) -> Cluster:
    """Reads the compute mode and sizes from the templates (main.yaml's defaults for parameters)."""
    resources = eks["Resources"]
    by_type: dict[str, list[dict[str, Any]]] = {}
    for resource in resources.values():
        by_type.setdefault(resource["Type"], []).append(resource.get("Properties", {}))
    (cluster,) = by_type["AWS::EKS::Cluster"]
    addons = {a["AddonName"] for a in by_type.get("AWS::EKS::Addon", [])}
    if cluster.get("ComputeConfig", {}).get("Enabled") is True:
        assert "general-purpose" in cluster["ComputeConfig"]["NodePools"]
        per_node = []
        if observability is not None:
            declared = {
                r["Properties"]["AddonName"]
                for r in observability["Resources"].values()
                if r["Type"] == "AWS::EKS::Addon"
            }
            if "amazon-cloudwatch-observability" in declared:
                switch = main["Parameters"].get("ContainerInsights", {}).get("Default", "enabled")
                per_node = list(CLOUDWATCH_DAEMONSETS) if switch == "enabled" else []
        system = 1 if "system" in cluster["ComputeConfig"]["NodePools"] else 0
        return Cluster(
            "EKS Auto Mode", AUTO_MODE_SMALLEST, AUTO_MODE_MAX_PODS, None, per_node,
            tainted_nodes=system,
        )  # fmt: skip
    (group,) = by_type["AWS::EKS::Nodegroup"]
    eks_params = next(
        s["Properties"]["Parameters"]
        for s in main["Resources"].values()
        if s["Type"] == "AWS::CloudFormation::Stack" and "eks.yaml" in str(s["Properties"])
    )

    def resolve(value: Any) -> Any:
        ref = value["Ref"] if isinstance(value, dict) else None
        return _param_default(main, eks_params[ref]) if ref in eks_params else value

    (instance,) = [resolve(t) for t in group["InstanceTypes"]]
    # No Cluster Autoscaler or Karpenter is declared anywhere, so the desired size is all there is.
    nodes = int(resolve(group["ScalingConfig"]["DesiredSize"]))
    return Cluster(
        f"managed node group, {nodes} x {instance}",
        instance,
        INSTANCE_TYPES[instance].eni_max_pods,
        nodes,
        list(NODE_GROUP_DAEMONSETS),
        COREDNS + (METRICS_SERVER if "metrics-server" in addons else []),
    )


def demand_from_manifests(docs: list[dict[str, Any]]) -> Demand:
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    hpa = next(d for d in docs if d["kind"] == "HorizontalPodAutoscaler")
    pod = deployment["spec"]["template"]["spec"]
    cpu = memory = 0
    for container in pod["containers"]:
        requests = container["resources"]["requests"]
        cpu += int(parse_quantity(requests["cpu"]) * 1000)
        memory += int(parse_quantity(requests["memory"]) / 2**20)
    spreads = [
        c
        for c in pod.get("topologySpreadConstraints", [])
        if c["topologyKey"] == "kubernetes.io/hostname"
        and c["whenUnsatisfiable"] == "DoNotSchedule"
    ]
    skews = [c["maxSkew"] for c in spreads]
    return Demand(
        replicas=hpa["spec"]["minReplicas"],  # the Deployment leaves the count to the HPA
        hpa_max=hpa["spec"]["maxReplicas"],
        surge=int(deployment["spec"]["strategy"]["rollingUpdate"]["maxSurge"]),
        cpu=cpu,
        memory=memory,
        node_skew=min(skews) if skews else None,
        taints_honored=all(c.get("nodeTaintsPolicy") == "Honor" for c in spreads),
    )


def check(cluster: Cluster, demand: Demand, pods: int | None = None) -> Report:
    """Schedules the cluster pods, then `pods` app pods (default: the peak), like kube-scheduler."""
    needed = demand.peak if pods is None else pods
    nodes = [cluster.new_node() for _ in range(cluster.fixed_nodes or 0)]
    for request in cluster.cluster_pods:
        target = max((n for n in nodes if n.fits(*request)), key=lambda n: n.cpu, default=None)
        if target is not None:
            target.take(*request)
    # Never fitting an app pod (no room for one); counted by the spread unless it honours taints.
    tainted = [] if demand.taints_honored else [Node(0, 0, 0)] * cluster.tainted_nodes
    placed = 0
    for _ in range(needed):
        fitting = [n for n in nodes if n.fits(demand.cpu, demand.memory)]
        if demand.node_skew is not None and nodes:
            # PodTopologySpread: a node qualifies if its count + 1 exceeds the smallest count of
            # any node (full ones included) by at most maxSkew.
            least = min(n.app_pods for n in nodes + tainted)
            fitting = [n for n in fitting if n.app_pods + 1 - least <= demand.node_skew]
        if not fitting and cluster.fixed_nodes is None and len(nodes) < 100:
            fitting = [cluster.new_node()]
            nodes += fitting
        if not fitting:
            continue
        min(fitting, key=lambda n: n.app_pods).take(demand.cpu, demand.memory, app=True)
        placed += 1
    return Report(cluster.mode, len(nodes), placed, needed)


@pytest.fixture(scope="module")
def demand() -> Demand:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (it renders the kustomize base offline)")
    out = subprocess.run(
        [kubectl, "kustomize", str(REPO_ROOT / "k8s")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return demand_from_manifests([d for d in yaml.safe_load_all(out) if d])


def test_the_default_deploy_runs_the_hpa_maximum_during_a_rollout(demand: Demand) -> None:
    cluster = cluster_from_templates(
        load_path(REPO_ROOT / "cfn" / "eks.yaml"),
        load_path(REPO_ROOT / "cfn" / "main.yaml"),
        load_path(REPO_ROOT / "cfn" / "observability.yaml"),
    )
    # Container Insights is on by default: its agents take their share of every node first.
    assert cluster.system_pods_per_node == CLOUDWATCH_DAEMONSETS
    report = check(cluster, demand)
    assert report.fits, str(report)
    assert report.nodes == 2, str(report)  # docs/deploy-aws.md: "11 on 2 nodes"
    assert check(cluster, demand, demand.replicas + demand.surge).fits


def test_the_t3_micro_node_group_leaves_pods_pending(demand: Demand) -> None:
    """The templates before Auto Mode (recorded in tests/fixtures/capacity): 3 x t3.micro with 4
    pods each, two of them aws-node and kube-proxy, CoreDNS on two nodes, no node autoscaler."""
    cluster = cluster_from_templates(
        load_path(FIXTURES / "capacity" / "eks-nodegroup-t3micro.yaml"),
        load_path(FIXTURES / "capacity" / "main-nodegroup-t3micro.yaml"),
    )
    assert (cluster.instance, cluster.fixed_nodes, cluster.max_pods) == ("t3.micro", 3, 4)
    report = check(cluster, demand)
    assert not report.fits, str(report)
    # 3 nodes x (4 - 2 DaemonSet pods) - 2 CoreDNS = 4 slots for 11 app pods at the peak.
    assert (report.placed, report.needed) == (4, demand.hpa_max + demand.surge)


def test_the_check_counts_memory_and_the_node_spread() -> None:
    """Guards the simulation itself with small hand-computed cases."""
    big = Cluster("3 x m5.large", "m5.large", 29, 3)
    light = Demand(replicas=3, hpa_max=3, surge=0, cpu=100, memory=100, node_skew=1)
    assert check(big, light).placed == 3
    # Memory: m5.large leaves 8192 - 255 - 11*29 - 100 = 7518 MiB; 3000 MiB pods fit twice.
    heavy = Demand(replicas=3, hpa_max=9, surge=0, cpu=100, memory=3000, node_skew=1)
    assert check(big, heavy).placed == 6
    # Spread: with one pod slot per node, three nodes hold three pods and the rest stay Pending.
    spread = Demand(replicas=3, hpa_max=6, surge=0, cpu=100, memory=100, node_skew=1)
    slots = check(Cluster("1 slot each", "t3.micro", 1, 3), spread)
    assert (slots.placed, slots.needed) == (3, 6)
    assert check(big, spread).fits
    # Auto Mode grows: c5.large leaves 4096 - 255 - 11*110 - 100 = 2531 MiB: two 1000 MiB pods.
    auto = Cluster("auto", AUTO_MODE_SMALLEST, AUTO_MODE_MAX_PODS, None)
    grown = check(auto, Demand(replicas=3, hpa_max=9, surge=0, cpu=100, memory=1000, node_skew=1))
    assert grown.fits and grown.nodes == 5
    # A tainted node the spread counts keeps the smallest count at 0: one app pod per node.
    with_system = Cluster("auto", AUTO_MODE_SMALLEST, AUTO_MODE_MAX_PODS, None, tainted_nodes=1)
    light_auto = Demand(replicas=3, hpa_max=9, surge=0, cpu=100, memory=100, node_skew=1)
    assert check(auto, light_auto).nodes == 1
    assert check(with_system, light_auto).nodes == 9
    honoured = Demand(**{**light_auto.__dict__, "taints_honored": True})
    assert check(with_system, honoured).nodes == 1
