"""The fleet a number of active users needs, and its monthly cost: arithmetic from measured figures
(bench/sizing.py), a usage model and dated list prices. It prints the table of docs/sizing.md;
tests/system/test_bench.py checks the arithmetic on a known input.

Everything here that is not measured is an estimate, and says so where it is set: the usage
model, the node's allocatable CPU, the load balancer's LCU dimensions, cache prices not already
cited in docs/deploy-aws.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

HOURS_PER_MONTH = 730
GIB = 1 << 30


@dataclass(frozen=True)
class PodFigures:
    """Measured CPU seconds per request on each container, and the pod's shape from k8s/."""

    view_app_cpu: float
    view_proxy_cpu: float
    save_app_cpu: float
    save_proxy_cpu: float
    app_limit: float
    proxy_limit: float
    app_request: float
    proxy_request: float
    workers: int
    page_bytes: int  # a page of a session with the model's messages, as served

    def at_limit(self, save_share: float) -> float:
        """Requests/s one pod sustains with each container at its CPU limit."""
        app = _mix(self.view_app_cpu, self.save_app_cpu, save_share)
        proxy = _mix(self.view_proxy_cpu, self.save_proxy_cpu, save_share)
        return min(self.app_limit / app, self.proxy_limit / proxy)


@dataclass(frozen=True)
class CacheFigures:
    """Measured on Valkey: memory per session by its messages, commands and bytes per request."""

    session_bytes: dict[int, float]
    view_commands: float
    view_bytes: float
    save_commands: float
    save_bytes: float

    @staticmethod
    def ecpus(commands: float, moved: float) -> float:
        """ElastiCache Serverless bills a simple command 1 ECPU per KB it moves, at least 1
        (docs/cluster.md); from per-request totals this is a lower bound, an estimate."""
        return max(commands, moved / 1024)


@dataclass(frozen=True)
class Usage:
    """What one active user does (an assumption: state it next to every table)."""

    view_every_s: float = 30.0
    save_every_s: float = 300.0  # its redirected page is one of the views
    messages: int = 10
    # Sessions held per active user: their own, plus those of users who left within the 30
    # minutes a session outlives its last request (a visit of ~30 minutes).
    sessions_per_user: float = 2.0
    # The HPA's target (k8s/horizontalpodautoscaler.yaml) of the pod's CPU requests, and the
    # headroom above the steady load its maximum allows for.
    hpa_target: float = 0.70
    hpa_headroom: float = 2.0
    hpa_floor: int = 3  # one replica per zone


@dataclass(frozen=True)
class CacheNode:
    name: str
    gib: float  # the node's memory
    per_hour: float  # Valkey, on demand
    cited: bool  # the price is in docs/deploy-aws.md; else an assumption (see docs/sizing.md)


@dataclass(frozen=True)
class Prices:
    """us-east-1 on-demand, per hour unless named otherwise (docs/deploy-aws.md, 2026-11-30)."""

    eks_cluster: float = 0.10
    node: float = 0.0857  # c6a.large $0.0765 + the Auto Mode fee ~$0.0092
    node_ebs_month: float = 6.40  # gp3, 80 GiB
    nlb: float = 0.0225
    nlb_lcu: float = 0.006
    # NAT gateway, public IPv4 addresses, KMS, the secret, control-plane logs, ECR.
    fixed_month: float = 52.90
    serverless_gb_hour: float = 0.084
    serverless_min_gb: float = 0.1
    serverless_per_million_ecpus: float = 0.0023
    # Assumed, not in the repository: EC2 data transfer out to the internet, $/GB, by monthly
    # tier, each up to a cumulative bound in GB (the first 10 TB, the next 40, the next 100,
    # the rest), after the free first 100 GB.
    egress_tiers: tuple[tuple[float, float], ...] = (
        (10_000, 0.09),
        (50_000, 0.085),
        (150_000, 0.07),
        (math.inf, 0.05),
    )
    cache_nodes: tuple[CacheNode, ...] = (
        CacheNode("cache.t3.micro", 0.5, 0.0136, cited=True),
        # Assumed, not in the repository: the Redis OSS list price less Valkey's 20 %.
        CacheNode("cache.m7g.large", 6.38, 0.1264, cited=False),
        CacheNode("cache.r7g.large", 13.07, 0.1752, cited=False),
    )


@dataclass(frozen=True)
class Limits:
    """Capacities that are not measured here (estimates, see docs/sizing.md)."""

    node_allocatable_cpu: float = 1.93  # c6a.large, 2 vCPU, less the EKS kube-reserved 70m
    reserved_memory: float = 0.25  # ElastiCache's default reserved-memory-percent
    t3_commands_per_s: float = 5_000  # burstable: beyond this its CPU credits run out
    node_commands_per_s: float = 100_000  # one Valkey primary, simple commands
    connections_per_worker_node: int = 2  # one session connection plus the pooled client's
    max_clients: int = 65_000  # per ElastiCache node
    # A Network Load Balancer's LCU for TCP: the largest of these per hour.
    lcu_new_flows_per_s: float = 800
    lcu_active_flows: float = 100_000
    lcu_gb_per_hour: float = 1.0
    request_bytes: int = 600  # a browser's request with its headers
    visit_seconds: float = 1800  # one new connection per user per visit (keep-alive 75 s)


@dataclass(frozen=True)
class FleetRow:
    users: int
    views_per_s: float
    saves_per_s: float
    cpu: float  # cores, both containers
    pods: int
    hpa_min: int
    hpa_max: int
    nodes: int
    cache: str
    cache_month: float
    serverless_month: float
    cache_gb: float
    commands_per_s: float
    connections_per_node: int
    lcus: float
    egress_month: float
    month: float
    limits_first: str = ""
    costs: dict[str, float] = field(default_factory=dict)


def _mix(view: float, save: float, save_share: float) -> float:
    return view * (1 - save_share) + save * save_share


def fleet_row(
    users: int,
    pod: PodFigures,
    cache: CacheFigures,
    usage: Usage = Usage(),
    prices: Prices = Prices(),
    limits: Limits = Limits(),
) -> FleetRow:
    views = users / usage.view_every_s
    saves = users / usage.save_every_s
    cpu = views * (pod.view_app_cpu + pod.view_proxy_cpu) + saves * (
        pod.save_app_cpu + pod.save_proxy_cpu
    )
    # The HPA keeps the pods' CPU (both containers) at its target share of their requests.
    per_pod = usage.hpa_target * (pod.app_request + pod.proxy_request)
    pods = math.ceil(cpu / per_pod)
    hpa_min = max(usage.hpa_floor, pods)
    hpa_max = max(hpa_min + 1, math.ceil(pods * usage.hpa_headroom))
    pods_per_node = math.floor(limits.node_allocatable_cpu / (pod.app_request + pod.proxy_request))
    nodes = max(usage.hpa_floor, math.ceil(hpa_min / pods_per_node))

    stored = users * usage.sessions_per_user * cache.session_bytes[usage.messages]
    cache_gb = stored / GIB
    commands = views * cache.view_commands + saves * cache.save_commands
    ecpus = views * CacheFigures.ecpus(cache.view_commands, cache.view_bytes) + saves * (
        CacheFigures.ecpus(cache.save_commands, cache.save_bytes)
    )
    node, shards = _cache_nodes(cache_gb, commands, prices, limits)
    # A primary and one replica per shard, as the default deploy.
    cache_month = node.per_hour * 2 * shards * HOURS_PER_MONTH
    cache_name = f"2 {node.name}" if shards == 1 else f"cluster: {shards} shards of 2 {node.name}"
    serverless_month = (
        max(cache_gb, prices.serverless_min_gb) * prices.serverless_gb_hour * HOURS_PER_MONTH
        + ecpus * 3600 * HOURS_PER_MONTH / 1e6 * prices.serverless_per_million_ecpus
    )
    connections = hpa_max * pod.workers * limits.connections_per_worker_node

    moved_gb_hour = (
        (views * (pod.page_bytes + limits.request_bytes) + saves * limits.request_bytes)
        * 3600
        / 1e9
    )
    lcus = max(
        users / limits.visit_seconds / limits.lcu_new_flows_per_s,
        users / limits.lcu_active_flows,
        moved_gb_hour / limits.lcu_gb_per_hour,
    )
    costs = {
        "EKS": prices.eks_cluster * HOURS_PER_MONTH,
        "nodes": nodes * (prices.node * HOURS_PER_MONTH + prices.node_ebs_month),
        "NLB": (prices.nlb + prices.nlb_lcu * lcus) * HOURS_PER_MONTH,
        "cache": min(cache_month, serverless_month),
        "fixed": prices.fixed_month,
        "egress": _egress(views * pod.page_bytes * 3600 * HOURS_PER_MONTH / 1e9, prices),
    }
    first = []
    if pods <= usage.hpa_floor:
        first.append("nothing: the 3-pod, 3-node floor (one per zone) is mostly idle")
    else:
        first.append("pod CPU (the HPA adds pods; nodes follow)")
    usable = node.gib * (1 - limits.reserved_memory)
    if shards > 1 and commands > shards * limits.node_commands_per_s / 2:
        first.append("cache commands/s (shards)")
    elif usable * shards < 2 * cache_gb:  # less than half its memory free
        first.append("cache memory")
    if connections > limits.max_clients / 2:
        first.append("Redis connections")
    if moved_gb_hour > 1:
        first.append("NLB bytes (LCUs)")
    return FleetRow(
        users,
        views,
        saves,
        cpu,
        pods,
        hpa_min,
        hpa_max,
        nodes,
        cache_name,
        cache_month,
        serverless_month,
        cache_gb,
        commands,
        connections,
        lcus,
        costs["egress"],
        sum(costs.values()),
        "; ".join(first),
        costs,
    )


def _cache_nodes(
    gb: float, commands: float, prices: Prices, limits: Limits
) -> tuple[CacheNode, int]:
    """The cheapest node type (and shards of it) whose usable memory holds ``gb`` and whose
    primaries take ``commands``/s; t3 only while its CPU credits last."""
    best: tuple[float, CacheNode, int] | None = None
    for node in prices.cache_nodes:
        throughput = (
            limits.t3_commands_per_s
            if node.name.startswith("cache.t3")
            else limits.node_commands_per_s
        )
        usable = node.gib * (1 - limits.reserved_memory)
        shards = max(1, math.ceil(gb / usable), math.ceil(commands / throughput))
        if node.name.startswith("cache.t3") and shards > 1:
            continue  # a cluster of burstable nodes: take a bigger node instead
        cost = node.per_hour * shards
        if best is None or cost < best[0]:
            best = (cost, node, shards)
    assert best is not None
    return best[1], best[2]


def _egress(gb: float, prices: Prices) -> float:
    """Data transfer out to the internet for ``gb`` GB in a month, tier by tier."""
    cost, left, below = 0.0, max(0.0, gb - 100), 0.0
    for upto, price in prices.egress_tiers:
        step = min(left, upto - below)
        cost += step * price
        left -= step
        below = upto
    return cost


def users_at(pods: int, pod: PodFigures, usage: Usage = Usage()) -> int:
    """The active users ``pods`` pods serve at the HPA's target."""
    per_user = (pod.view_app_cpu + pod.view_proxy_cpu) / usage.view_every_s + (
        pod.save_app_cpu + pod.save_proxy_cpu
    ) / usage.save_every_s
    return math.floor(pods * usage.hpa_target * (pod.app_request + pod.proxy_request) / per_user)


def _money(value: float) -> str:
    return f"${value:,.0f}"


def _cheaper(nodes: str, node_month: float, serverless_month: float) -> str:
    """Both prices, the one the total counts in bold."""
    if node_month <= serverless_month:
        return f"**{nodes} {_money(node_month)}** / {_money(serverless_month)}"
    return f"{nodes} {_money(node_month)} / **{_money(serverless_month)}**"


def render_fleet(
    pod: PodFigures,
    cache: CacheFigures,
    hpa_max: int,
    users: tuple[int, ...] = (1_000, 10_000, 100_000, 1_000_000),
) -> str:
    """The table, and a line on one pod and on the HPA's maximum today (``hpa_max``)."""
    rows = [fleet_row(n, pod, cache) for n in users]
    lines = [
        "| active users | views/s | saves/s | CPU cores | pods (HPA min/max) | nodes (c6a.large) "
        "| cache GiB | Redis cmds/s | cache: node-based / Serverless, $/month | conns per cache "
        "node | NLB LCUs | internet egress $/month | total $/month | limits first |",
        "|---:|---:|---:|---:|---|---:|---:|---:|---|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row.users:,} | {row.views_per_s:,.0f} | {row.saves_per_s:,.1f} | {row.cpu:,.2f} "
            f"| {row.pods} ({row.hpa_min}/{row.hpa_max}) | {row.nodes} "
            f"| {row.cache_gb:,.2f} | {row.commands_per_s:,.0f} "
            f"| {_cheaper(row.cache, row.cache_month, row.serverless_month)} "
            f"| {row.connections_per_node:,} | {row.lcus:,.1f} | {_money(row.egress_month)} "
            f"| **{_money(row.month)}** | {row.limits_first} |"
        )
    usage = Usage()
    per_pod = users_at(1, pod)
    share = (1 / usage.save_every_s) / (1 / usage.view_every_s + 1 / usage.save_every_s)
    lines += [
        "",
        f"At the HPA's target one pod serves {per_pod:,} active users "
        f"({per_pod / usage.view_every_s:,.0f} page views/s; at its CPU limits it would take "
        f"{pod.at_limit(share):,.0f} req/s of this mix); today's maxReplicas of {hpa_max} is "
        f"reached at {users_at(hpa_max, pod):,} active users.",
    ]
    return "\n".join(lines)
