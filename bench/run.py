"""The benchmark run: every scenario side by side in one process tree, on servers started once
(the rows' variants, the pod's nginx in front, the cluster), then the scenarios that need their
own servers (Redis costs, the fault run). Each scenario lives in its own module."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from bench.client import PageClient
from bench.costs import Footprint, RedisCost, cluster_costs, redis_costs
from bench.fault import FaultRun, fault_run
from bench.latency import SaveLatency, save_latency
from bench.pages import message_text
from bench.plan import PAGE_MESSAGES, Plan
from bench.slow import SlowRun, slow_clients
from bench.throughput import Behind, Row, Target, measure_rows, page_sessions, verify_saves
from bench.variants import (
    Store,
    anchor_app,
    bench_valkey,
    ceiling_app,
    our_app,
    serving,
    sessions_with_messages,
)
from bench.wrk import Request
from localservers.cluster import ValkeyCluster
from localservers.gunicorn import Gunicorn, start_together
from localservers.nginx import Nginx


@dataclass
class Results:
    plan: Plan
    rows: dict[str, Row]
    slow: SlowRun
    saves_verified: dict[str, str]
    save_latency: list[SaveLatency]
    redis_costs: list[RedisCost]
    footprints: list[Footprint]
    fault: FaultRun | None
    page_bytes: dict[str, int]
    failures: list[str]
    server_version: str


def run(plan: Plan, workdir: Path, log: Callable[[str], None]) -> Results:
    failures: list[str] = []
    logs = workdir / "logs"
    logs.mkdir()
    with ExitStack() as stack:
        redis_server = bench_valkey(workdir / "redis-main")
        redis_server.start()
        stack.callback(redis_server.stop)
        server_version = redis_server.version()
        ours = our_app(redis_server.port, 0, logs)
        anchor = anchor_app(redis_server.port, 1, logs)
        ceiling = ceiling_app(redis_server.port, logs)
        # The cost of the Prometheus metrics: our app again, with METRICS_PORT=0.
        bare = our_app(redis_server.port, 2, logs, name="app-no-metrics", metrics=False)
        for server in (ours, anchor, ceiling, bare):
            stack.callback(server.stop)
        log("starting redis and 4 gunicorn instances")
        start_together([ours, anchor, ceiling, bare])
        # The same app on a local Valkey cluster (3 primaries + 3 replicas, no persistence, as
        # the single Valkey), measured in the same interleaved repeats as every other row.
        log("starting a Valkey cluster (3 primaries + 3 replicas) and the app on it")
        cluster = ValkeyCluster(workdir / "cluster", durable=False)
        ours_cluster = stack.enter_context(
            serving(cluster, lambda port: our_app(port, 0, logs, name="app-cluster", cluster=True))
        )
        # The app as the pod serves it (nginx.conf in front), and the ceiling behind the same
        # nginx, so the proxy's cost shows on both sides of the comparison.
        proxied = {
            name: Behind(server, Nginx(server.port, logs / f"nginx-{name}.log"))
            for name, server in (("app", ours), ("ceiling", ceiling))
        }
        for behind in proxied.values():
            behind.proxy.start()
            stack.callback(behind.proxy.stop)

        log("preparing sessions")
        page_bytes, page_requests = page_sessions(
            {
                "app": ours,
                "anchor": anchor,
                "ceiling": ceiling,
                "app-no-metrics": bare,
                "app-cluster": ours_cluster,
            },
            failures,
        )
        # Each save row: the server it loads and the store whose CPU it counts.
        savers: dict[str, tuple[Gunicorn, Store]] = {
            "save_app": (ours, redis_server),
            "save_anchor": (anchor, redis_server),
            "save_app_cluster": (ours_cluster, cluster),
        }
        pools = {
            name: sessions_with_messages(server.port, plan.pool_sessions, PAGE_MESSAGES)
            for name, (server, _) in savers.items()
        }
        targets: dict[str, Target] = {
            "page_app": Target(ours, redis_server, "/", page_requests["app"]),
            "page_ceiling": Target(ceiling, redis_server, "/", page_requests["ceiling"]),
            "page_anchor": Target(anchor, redis_server, "/", page_requests["anchor"]),
            "page_app_no_metrics": Target(bare, redis_server, "/", page_requests["app-no-metrics"]),
            "page_app_nginx": Target(proxied["app"], redis_server, "/", page_requests["app"]),
            "page_ceiling_nginx": Target(
                proxied["ceiling"], redis_server, "/", page_requests["ceiling"]
            ),
            "page_app_cluster": Target(ours_cluster, cluster, "/", page_requests["app-cluster"]),
        }
        # The floor of a save: the ceiling answers the app's own save requests (same cookies
        # and form) with a 303, reading the form and nothing else.
        targets["save_ceiling"] = Target(
            ceiling, redis_server, "/persistMessage", _save_requests(pools["save_app"])
        )
        for name, clients in pools.items():
            server, store = savers[name]
            targets[name] = Target(server, store, "/persistMessage", _save_requests(clients))
        rows = measure_rows(plan, targets, workdir, failures, log)
        # Only the anchor may lose saves (racing read-modify-writes); the app never.
        saves_verified = {
            name: verify_saves(clients, rows[name], failures, strict=name != "save_anchor")
            for name, clients in pools.items()
        }

        log("save latency by session size")
        latency = save_latency(plan, ours, anchor)

        log(f"page views beside {plan.slow_headers + plan.slow_bodies} slow clients")
        slow = slow_clients(plan, proxied["app"], ours, page_requests["app"], workdir)

        # Nothing else talks to the cluster now: its commandstats are the app's alone.
        log("redis commands per request on the cluster")
        on_cluster = cluster_costs(plan, cluster, ours_cluster)

    log("redis commands, round trips and bytes per session")
    costs, footprints = redis_costs(plan, workdir, logs)
    costs += on_cluster
    log(f"fault run ({plan.fault_seconds} s)")
    fault = fault_run(plan, workdir, logs, failures)
    return Results(
        plan,
        rows,
        slow,
        saves_verified,
        latency,
        costs,
        footprints,
        fault,
        page_bytes,
        failures,
        server_version,
    )


def _save_requests(clients: list[PageClient]) -> list[Request]:
    """One save per client, round-robin: its cookie and a form with its page's CSRF token."""
    return [Request("POST", c.cookie_header, c.save_body(message_text(9999))) for c in clients]
