"""The benchmark itself: every measurement, run side by side in one process tree."""

from __future__ import annotations

import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import redis

from bench.client import PageClient
from bench.pages import message_text
from bench.rtt_proxy import RoundTripProxy
from bench.slow import SlowClients
from bench.variants import (
    Store,
    anchor_app,
    bench_valkey,
    ceiling_app,
    our_app,
    serving,
    sessions_with_messages,
    start_all,
)
from bench.wrk import CONNECTIONS, Request, WrkResult, run_wrk
from localservers.cluster import ValkeyCluster
from localservers.gunicorn import Gunicorn
from localservers.nginx import Nginx
from localservers.valkey import Valkey
from localservers.waits import sleep_until

PAGE_MESSAGES = 10


@dataclass(frozen=True)
class Settings:
    duration: int
    repeats: int
    warmup: int
    pool_sessions: int
    save_sizes: tuple[int, ...]
    save_sessions: int
    save_rounds: int
    counted_requests: int
    fault_seconds: int
    fault_stop_at: float
    fault_start_at: float
    slow_headers: int
    slow_bodies: int

    @classmethod
    def full(cls, duration: int, repeats: int) -> Settings:
        """The published numbers: 1/100/500 messages held, a 20 s fault run (stop 5 s, start 10 s).
        128 save sessions against 16 connections keep each session growing slowly and two
        saves rarely racing on one session."""
        return cls(
            duration=duration,
            repeats=repeats,
            warmup=2,
            pool_sessions=128,
            save_sizes=(1, 100, 500),
            save_sessions=8,
            save_rounds=25,
            counted_requests=100,
            fault_seconds=20,
            fault_stop_at=5.0,
            fault_start_at=10.0,
            slow_headers=200,
            slow_bodies=50,
        )

    @classmethod
    def smoke(cls, duration: int, repeats: int) -> Settings:
        """Every step once with tiny sizes: proves the harness end to end in ~20 s (CI)."""
        return cls(
            duration=duration,
            repeats=repeats,
            warmup=0,
            pool_sessions=8,
            save_sizes=(1, 20, 50),
            save_sessions=2,
            save_rounds=3,
            counted_requests=10,
            fault_seconds=4,
            fault_stop_at=1.0,
            fault_start_at=2.0,
            slow_headers=20,
            slow_bodies=5,
        )


@dataclass
class Measured:
    """One wrk run plus the CPU the app's workers and Redis spent on it."""

    wrk: WrkResult
    app_cpu_us: float
    redis_cpu_us: float


@dataclass
class Row:
    """One throughput row: the medians over repeats of one wrk target."""

    key: str
    label: str
    measured: list[Measured] = field(default_factory=list)
    # Answered during warm-up: not measured, but a save row's sessions hold them too.
    warmup_requests: int = 0

    @property
    def results(self) -> list[WrkResult]:
        return [m.wrk for m in self.measured]

    @property
    def rps(self) -> float:
        return statistics.median(r.rps for r in self.results)

    @property
    def p50(self) -> float:
        return statistics.median(r.p50_ms for r in self.results)

    @property
    def p99(self) -> float:
        return statistics.median(r.p99_ms for r in self.results)

    @property
    def app_cpu_us(self) -> float:
        return statistics.median(m.app_cpu_us for m in self.measured)

    @property
    def redis_cpu_us(self) -> float:
        return statistics.median(m.redis_cpu_us for m in self.measured)

    def ratio_to(self, ceiling: Row) -> float:
        """Median of per-repeat ratios: a row and the ceiling measured seconds apart share the
        machine's load of the moment, which the ratio of two medians would not."""
        return statistics.median(
            mine.rps / theirs.rps
            for mine, theirs in zip(self.results, ceiling.results, strict=True)
            if theirs.rps
        )

    @property
    def bad(self) -> int:
        return sum(r.status_errors + r.socket_errors for r in self.results)


@dataclass
class SaveLatency:
    variant: str
    held: int
    samples_ms: list[float]

    def percentile(self, q: float) -> float:
        ordered = sorted(self.samples_ms)
        return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


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


@dataclass
class FaultRun:
    seconds: int
    stop_at: float
    start_at: float
    statuses: dict[int, int]
    socket_errors: int
    ping_after_start_s: float
    first_200_after_start_s: float | None
    messages_after: int
    # One visitor's requests while Redis is down: what a user waits for the 503 page.
    outage_probe: list[tuple[int, float]]


@dataclass
class SlowRun:
    """Page views while slow clients hold connections: behind the pod's nginx, and straight
    to gunicorn (what the pod did before nginx)."""

    headers: int
    bodies: int
    seconds: int
    proxied: WrkResult
    bare: WrkResult
    reopened_proxied: int


@dataclass
class Results:
    settings: Settings
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


CLUSTER_NAME = "app on the cluster"


def run(settings: Settings, workdir: Path, log: Callable[[str], None]) -> Results:
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
        start_all([ours, anchor, ceiling, bare])
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
        page_bytes, page_requests = _page_sessions(
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
            name: sessions_with_messages(server.port, settings.pool_sessions, PAGE_MESSAGES)
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
        for name, clients in pools.items():
            server, store = savers[name]
            targets[name] = Target(
                server,
                store,
                "/persistMessage",
                [
                    Request("POST", c.cookie_header, c.save_body(message_text(9999)))
                    for c in clients
                ],
            )
        rows = _throughput(settings, targets, workdir, failures, log)
        # Only the anchor may lose saves (racing read-modify-writes); the app never.
        saves_verified = {
            name: _verify_saves(clients, rows[name], failures, strict=name != "save_anchor")
            for name, clients in pools.items()
        }

        log("save latency by session size")
        save_latency = _save_latency(settings, ours, anchor)

        log(f"page views beside {settings.slow_headers + settings.slow_bodies} slow clients")
        slow = _slow_clients(settings, proxied["app"], ours, page_requests["app"], workdir)

        # Nothing else talks to the cluster now: its commandstats are the app's alone.
        log("redis commands per request on the cluster")
        cluster_costs = _cluster_costs(settings, cluster, ours_cluster)

    log("redis commands, round trips and bytes per session")
    redis_costs, footprints = _redis_costs(settings, workdir, logs)
    redis_costs += cluster_costs
    log(f"fault run ({settings.fault_seconds} s)")
    fault = _fault_run(settings, workdir, logs, failures)
    return Results(
        settings,
        rows,
        slow,
        saves_verified,
        save_latency,
        redis_costs,
        footprints,
        fault,
        page_bytes,
        failures,
        server_version,
    )


def _page_sessions(
    variants: dict[str, Gunicorn], failures: list[str]
) -> tuple[dict[str, int], dict[str, list[Request]]]:
    """One visitor with PAGE_MESSAGES messages per stateful variant; check that all the pages
    really list the same number of messages, so the rows compare the same work."""
    page_bytes: dict[str, int] = {}
    requests: dict[str, list[Request]] = {}
    for name, server in variants.items():
        if name == "ceiling":
            client = PageClient(server.port)
        else:
            client = sessions_with_messages(server.port, 1, PAGE_MESSAGES)[0]
        page = client.get_page()
        count = client.message_count()
        if count != PAGE_MESSAGES:
            failures.append(f"{name}: page lists {count} messages, expected {PAGE_MESSAGES}")
        page_bytes[name] = len(page.encode())
        requests[name] = [Request("GET", client.cookie_header)]
    return page_bytes, requests


ROW_LABELS = {
    "page_app": "a. app GET / (session with 10 messages)",
    "page_ceiling": "b. ceiling: bare Flask, same template",
    "page_anchor": "c. anchor: stock flask-session GET /",
    "page_app_no_metrics": "a0. app GET / with metrics off (METRICS_PORT=0)",
    "page_app_nginx": "a'. app GET / behind the pod's nginx (as deployed)",
    "page_ceiling_nginx": "b'. ceiling behind the same nginx",
    "page_app_cluster": "a''. app GET / on a local Valkey cluster (3 primaries + 3 replicas)",
    "save_app": "d. app POST /persistMessage (303, not followed)",
    "save_anchor": "d. anchor POST /persistMessage (303, not followed)",
    "save_app_cluster": "d''. app POST /persistMessage on the same cluster (303, not followed)",
}


@dataclass(frozen=True)
class Behind:
    """A gunicorn behind the pod's nginx: requests go to nginx; CPU counts both."""

    app: Gunicorn
    proxy: Nginx

    @property
    def url(self) -> str:
        return self.proxy.url

    def cpu_seconds(self) -> float:
        return self.app.cpu_seconds() + self.proxy.cpu_seconds()


@dataclass(frozen=True)
class Target:
    """What one row loads (server, path, requests) and whose CPU it counts (server, store)."""

    server: Gunicorn | Behind
    store: Store
    path: str
    requests: list[Request]

    def run(self, seconds: int, workdir: Path) -> Measured:
        app_before, redis_before = self.server.cpu_seconds(), self.store.cpu_seconds()
        result = run_wrk(self.server.url + self.path, self.requests, seconds, workdir)
        app_after, redis_after = self.server.cpu_seconds(), self.store.cpu_seconds()
        per_request = 1e6 / max(result.requests, 1)
        return Measured(
            result,
            (app_after - app_before) * per_request,
            (redis_after - redis_before) * per_request,
        )


def _throughput(
    settings: Settings,
    targets: dict[str, Target],
    workdir: Path,
    failures: list[str],
    log: Callable[[str], None],
) -> dict[str, Row]:
    """Interleave the variants (rotating the order each repeat) so drift in machine load hits
    every row alike; report medians."""
    rows = {key: Row(key, ROW_LABELS[key]) for key in targets}
    keys = list(targets)
    if settings.warmup:
        for key in keys:
            warm = targets[key].run(settings.warmup, workdir)
            rows[key].warmup_requests = warm.wrk.requests
    for repeat in range(settings.repeats):
        order = keys[repeat % len(keys) :] + keys[: repeat % len(keys)]
        for key in order:
            measured = targets[key].run(settings.duration, workdir)
            rows[key].measured.append(measured)
            result = measured.wrk
            log(
                f"repeat {repeat + 1}/{settings.repeats} {key}: {result.rps:,.0f} req/s "
                f"p50 {result.p50_ms:.2f} ms p99 {result.p99_ms:.2f} ms, "
                f"app CPU {measured.app_cpu_us:.0f} us/req, Redis {measured.redis_cpu_us:.0f}"
            )
            if result.status_errors or result.socket_errors:
                failures.append(
                    f"{key}: {result.status_errors} non-2xx/3xx responses and "
                    f"{result.socket_errors} socket errors in repeat {repeat + 1}"
                )
    return rows


def _slow_clients(
    settings: Settings,
    proxied: Behind,
    bare: Gunicorn,
    requests: list[Request],
    workdir: Path,
) -> SlowRun:
    """wrk page views while slow clients trickle requests to the same server. One short run
    each: nginx closes a slow header after 10 s (it is re-opened at once), and bare gunicorn
    answers nothing at all once its two workers are held by slow requests."""
    seconds = min(settings.duration, 5)
    with SlowClients(proxied.proxy.port, settings.slow_headers, settings.slow_bodies) as slow:
        behind = run_wrk(proxied.url + "/", requests, seconds, workdir, count_statuses=True)
        reopened = slow.reopened
    with SlowClients(bare.port, settings.slow_headers, settings.slow_bodies):
        direct = run_wrk(bare.url + "/", requests, seconds, workdir, count_statuses=True)
    return SlowRun(settings.slow_headers, settings.slow_bodies, seconds, behind, direct, reopened)


def _verify_saves(clients: list[PageClient], row: Row, failures: list[str], strict: bool) -> str:
    """A 303 alone does not prove a save: count the messages the sessions list now against the
    saves wrk saw answered. The anchor's read-modify-write loses saves that race on one session
    (flask-session issues #71, #149), which is reported; for the app any loss is a failure."""
    counted = sum(r.requests for r in row.results) + row.warmup_requests
    listed = sum(c.message_count() for c in clients) - PAGE_MESSAGES * len(clients)
    # Requests in flight when wrk stops are processed but not counted by wrk.
    slack = CONNECTIONS * (len(row.results) + 1)
    if counted <= listed <= counted + slack:
        return f"all {counted} answered saves listed"
    if strict or listed > counted + slack:
        failures.append(f"{row.key}: sessions list {listed} new messages, wrk counted {counted}")
        return f"MISMATCH: {listed} listed, {counted} answered"
    return f"{counted - listed} of {counted} answered saves LOST (concurrent saves on a session)"


def _save_latency(settings: Settings, ours: Gunicorn, anchor: Gunicorn) -> list[SaveLatency]:
    """Fill fresh sessions to N messages through the endpoints first, then time single saves
    from one client, round-robin over every (variant, size, session), so machine noise hits all
    cells alike and each session grows by at most save_rounds during the timing."""
    cells = [
        (name, held, sessions_with_messages(server.port, settings.save_sessions, held))
        for held in settings.save_sizes
        for name, server in (("app", ours), ("anchor", anchor))
    ]
    samples: dict[tuple[str, int], list[float]] = {(name, held): [] for name, held, _ in cells}
    for i in range(settings.save_rounds * settings.save_sessions):
        for name, held, clients in cells:
            seconds = clients[i % len(clients)].save(message_text(held + i))
            samples[(name, held)].append(seconds * 1000)
    return [SaveLatency(name, held, values) for (name, held), values in samples.items()]


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


def _tally(servers: list[redis.Redis], proxy: RoundTripProxy | None = None) -> Tally:
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


def _redis_costs(
    settings: Settings, workdir: Path, logs: Path
) -> tuple[list[RedisCost], list[Footprint]]:
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
        start_all([ours, anchor])
        for name, app, db in (("app", ours, 0), ("anchor", anchor, 1)):
            client = sessions_with_messages(app.port, 1, PAGE_MESSAGES)[0]
            footprints.append(_footprint(name, server, db, client))
            costs += _count_requests(
                name, client, settings.counted_requests, lambda: _tally([info], proxy)
            )
    return costs, footprints


def _cluster_costs(settings: Settings, cluster: ValkeyCluster, app: Gunicorn) -> list[RedisCost]:
    """The same requests on the cluster, counted over its primaries, where every command of the
    app lands. No proxy there (the client talks to each node itself), so no round trips."""
    primaries = [node.client() for node in cluster.primaries()]
    try:
        client = sessions_with_messages(app.port, 1, PAGE_MESSAGES)[0]
        return _count_requests(
            CLUSTER_NAME, client, settings.counted_requests, lambda: _tally(primaries)
        )
    finally:
        for primary in primaries:
            primary.close()


def _count_requests(
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


def _footprint(name: str, server: Valkey, db: int, client: PageClient) -> Footprint:
    """MEMORY USAGE of every key in the variant's DB: this DB holds only this one session."""
    redis_db = server.client(db=db)
    sid = client.cookies.get("session", "")
    keys: dict[str, int] = {}
    for key in redis_db.scan_iter(count=1000):
        label = key.decode().replace(sid, "<sid>") if sid else key.decode()
        keys[label] = int(redis_db.execute_command("MEMORY USAGE", key, "SAMPLES", "0"))
    return Footprint(name, keys)


def _fault_run(
    settings: Settings, workdir: Path, logs: Path, failures: list[str]
) -> FaultRun | None:
    """Steady load on the app; Redis saved and stopped at stop_at, started at start_at on the
    same port with the same data; a poller times restart -> first 200 for a known session."""
    server = bench_valkey(workdir / "redis-fault")
    with serving(server, lambda port: our_app(port, 0, logs, name="app-fault")) as app:
        visitor = sessions_with_messages(app.port, 1, PAGE_MESSAGES)[0]
        poller = PageClient(app.port, timeout=1.0)
        poller.cookies = dict(visitor.cookies)
        result: dict[str, WrkResult] = {}

        def load() -> None:
            result["wrk"] = run_wrk(
                app.url + "/",
                [Request("GET", visitor.cookie_header)],
                settings.fault_seconds,
                workdir,
                count_statuses=True,
            )

        loader = threading.Thread(target=load)
        started = time.monotonic()
        loader.start()
        sleep_until(started + settings.fault_stop_at)
        server.stop(save=True)
        prober = PageClient(app.port, timeout=5.0)
        prober.cookies = dict(visitor.cookies)
        outage_probe = _probe(prober, 5, until=started + settings.fault_start_at - 0.2)
        sleep_until(started + settings.fault_start_at)
        restart = time.monotonic()
        first_200: list[float] = []
        poll_until = started + settings.fault_seconds + 5
        poll = threading.Thread(
            target=_poll_first_200, args=(poller, restart, poll_until, first_200)
        )
        poll.start()
        server.start()
        ping_after = time.monotonic() - restart
        poll.join()
        loader.join(timeout=settings.fault_seconds + 60)
        wrk_result = result.get("wrk")
        if wrk_result is None:
            failures.append("fault run: wrk produced no result")
            return None
        messages_after = visitor.message_count()
        if messages_after != PAGE_MESSAGES:
            failures.append(f"fault run: session lists {messages_after} messages after restart")
        return FaultRun(
            settings.fault_seconds,
            settings.fault_stop_at,
            settings.fault_start_at,
            wrk_result.statuses,
            wrk_result.socket_errors,
            ping_after,
            first_200[0] if first_200 else None,
            messages_after,
            outage_probe,
        )


def _probe(client: PageClient, count: int, until: float) -> list[tuple[int, float]]:
    """A few sequential page views (status, seconds; status 0: no answer within the client's
    timeout), stopping early at `until`. Under load a 503 waits behind the queued requests."""
    out: list[tuple[int, float]] = []
    while len(out) < count and time.monotonic() < until:
        try:
            status, _, seconds = client.request("GET", "/")
        except OSError:
            status, seconds = 0, client.timeout
        out.append((status, seconds))
    return out


def _poll_first_200(client: PageClient, since: float, until: float, out: list[float]) -> None:
    """Tight but bounded: one request every ~10 ms until a 200 or the deadline."""
    while time.monotonic() < until:
        try:
            status, _, _ = client.request("GET", "/")
        except OSError:
            status = 0
        if status == 200:
            out.append(time.monotonic() - since)
            return
        time.sleep(0.01)
