"""What a request costs in Redis (commands, round trips, new connections, from INFO commandstats
and the counting proxy) on one Valkey and on the cluster, and what a session takes in memory."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import redis

from app.store import session_key
from bench.client import PageClient
from bench.pages import message_text
from bench.plan import PAGE_MESSAGES, Plan
from bench.rtt_proxy import RoundTripProxy
from bench.variants import anchor_app, bench_valkey, our_app, sessions_with_messages
from localservers.cluster import ValkeyCluster
from localservers.gunicorn import Gunicorn, start_together
from localservers.valkey import Valkey

CLUSTER_NAME = "app on the cluster"


@dataclass
class RedisCost:
    variant: str
    request: str
    commands: dict[str, float]
    total_commands: float
    # None on the cluster: no counting proxy there (the client talks to each node directly).
    round_trips: float | None
    new_connections: int


@dataclass
class Footprint:
    variant: str
    keys: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.keys.values())


# Calls on the counted servers that are not the app's: our own INFO, and on a cluster's
# primaries the replicas' REPLCONF ACK (one a second each).
NOT_THE_APPS = ("info", "replconf")


@dataclass(frozen=True)
class Tally:
    """The counters a batch of requests is measured by, read before and after it."""

    calls: Counter[str]  # calls by command, summed over the servers counted
    total: int  # total_commands_processed, likewise
    connections: int  # total_connections_received, likewise
    round_trips: int | None  # through the counting proxy, where there is one


def tally(servers: list[redis.Redis], proxy: RoundTripProxy | None = None) -> Tally:
    """Read the counters. The INFO clients are long-lived, so their own handshake (HELLO,
    CLIENT SETINFO) is never in a delta, and they go straight to the servers, past the proxy."""
    calls: Counter[str] = Counter()
    total = connections = 0
    for server in servers:
        info = server.info("all")
        for key, value in info.items():
            if key.startswith("cmdstat_"):
                calls[key.removeprefix("cmdstat_")] += int(value["calls"])
        total += int(info["total_commands_processed"])
        connections += int(info["total_connections_received"])
    return Tally(calls, total, connections, None if proxy is None else proxy.snapshot().round_trips)


def redis_costs(plan: Plan, workdir: Path, logs: Path) -> tuple[list[RedisCost], list[Footprint]]:
    """A separate Redis reached through the counting proxy, so nothing else talks to it."""
    costs: list[RedisCost] = []
    footprints: list[Footprint] = []
    server = bench_valkey(workdir / "redis-costs")
    proxy = RoundTripProxy(server.port)
    with ExitStack() as stack:
        server.start()
        stack.callback(server.stop)
        info = server.client()
        stack.callback(info.close)
        proxy.start()
        stack.callback(proxy.stop)
        ours = our_app(proxy.port, 0, logs, name="app-costs")
        anchor = anchor_app(proxy.port, 1, logs, name="anchor-costs")
        for app in (ours, anchor):
            stack.callback(app.stop)
        start_together([ours, anchor])
        for name, app, db in (("app", ours, 0), ("anchor", anchor, 1)):
            client = sessions_with_messages(app.port, 1, PAGE_MESSAGES)[0]
            footprints.append(footprint(name, server, db, client))
            costs += count_requests(
                name, client, plan.counted_requests, lambda: tally([info], proxy)
            )
    return costs, footprints


def cluster_costs(plan: Plan, cluster: ValkeyCluster, app: Gunicorn) -> list[RedisCost]:
    """The same requests on the cluster, counted over its primaries, where every command of the
    app lands. No proxy there (the client talks to each node itself), so no round trips."""
    primaries = [node.client() for node in cluster.primaries()]
    try:
        client = sessions_with_messages(app.port, 1, PAGE_MESSAGES)[0]
        return count_requests(CLUSTER_NAME, client, plan.counted_requests, lambda: tally(primaries))
    finally:
        for primary in primaries:
            primary.close()


def count_requests(
    name: str, client: PageClient, n: int, tally: Callable[[], Tally]
) -> list[RedisCost]:
    """A page view, a save, and a save with the page it redirects to, n of each, counted."""
    # Warm both workers (connections, caches) before counting.
    for _ in range(20):
        client.get_page()

    def save() -> None:
        client.save(message_text(1))

    def save_then_page() -> None:
        save()
        client.get_page()

    return [
        _count(name, label, action, n, tally)
        for label, action in (
            ("GET / (unchanged session)", client.get_page),
            ("POST /persistMessage", save),
            ("POST + the redirected GET /", save_then_page),
        )
    ]


def _count(
    name: str, label: str, action: Callable[[], object], n: int, tally: Callable[[], Tally]
) -> RedisCost:
    """Per-request deltas over n requests, without the calls that are not the app's."""
    before = tally()
    for _ in range(n):
        action()
    # Let in-flight asynchronous work (none expected) land before reading the counters.
    time.sleep(0.05)
    after = tally()
    calls = after.calls - before.calls
    theirs = sum(calls[cmd] for cmd in NOT_THE_APPS)
    round_trips = (
        None
        if after.round_trips is None or before.round_trips is None
        else (after.round_trips - before.round_trips) / n
    )
    return RedisCost(
        name,
        label,
        {cmd: count / n for cmd, count in calls.items() if cmd not in NOT_THE_APPS},
        (after.total - before.total - theirs) / n,
        round_trips,
        after.connections - before.connections,
    )


SESSION_KEY_LABEL = "session:{<sha256(sid)>}"


def footprint(name: str, server: Valkey, db: int, client: PageClient) -> Footprint:
    """MEMORY USAGE of every key in the variant's DB: this DB holds only this one session."""
    redis_db = server.client(db=db)
    sid = client.cookies.get("session", "")
    keys: dict[str, int] = {}
    for key in redis_db.scan_iter(count=1000):
        # The app's key holds a hash of the session id (its own session_key names it), the
        # anchor's the id itself.
        text = key.decode()
        label = SESSION_KEY_LABEL if sid and text == session_key(sid) else text
        label = label.replace(sid, "<sid>") if sid else label
        keys[label] = int(redis_db.execute_command("MEMORY USAGE", key, "SAMPLES", "0"))
    return Footprint(name, keys)
