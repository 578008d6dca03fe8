"""Throughput rows: wrk against each variant (page views, saves), interleaved and repeated, with
the CPU the app's workers and Redis spent per request; and the check that every answered save
is listed afterwards.

wrk opens its connections all at once, and now and then every one of them lands on the same
gunicorn worker (whichever accepted first), which then serves the whole run alone: half the
throughput, and 20-25 % more CPU per request (measured: 863 against 692 µs per page view;
its gthread main thread wakes for every queued connection). Such a run says more about where
wrk's connections landed than about the variant, so it is measured again (``Target.run``).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.client import PageClient
from bench.plan import PAGE_MESSAGES, Plan
from bench.variants import Store, sessions_with_messages
from bench.wrk import CONNECTIONS, Request, WrkResult, run_wrk
from localservers.gunicorn import Gunicorn
from localservers.nginx import Nginx
from localservers.processes import cpu_seconds

# A run where one worker spent more than this share of the workers' CPU is measured again, at
# most LOPSIDED_RETRIES times (see the module docstring).
LOPSIDED_SHARE = 0.75
LOPSIDED_RETRIES = 3


@dataclass
class Measured:
    """One wrk run plus the CPU the app's workers and Redis spent on it."""

    wrk: WrkResult
    app_cpu_us: float
    redis_cpu_us: float
    # Runs before this one that a single worker served (and that were measured again), and the
    # requests answered in them (a save row's sessions hold those saves too).
    lopsided_runs: int = 0
    lopsided_requests: int = 0
    # This run too was served by one worker (kept: LOPSIDED_RETRIES were spent).
    lopsided_kept: bool = False


def _median(*path: str) -> property:
    """A Row property: the median over its repeats of ``measured.<path>``."""

    def median(row: Row) -> float:
        return statistics.median(_follow(m, path) for m in row.measured)

    return property(median)


def _follow(value: Any, path: tuple[str, ...]) -> float:
    for name in path:
        value = getattr(value, name)
    return float(value)


@dataclass
class Row:
    """One throughput row: the medians over repeats of one wrk target."""

    key: str
    label: str
    measured: list[Measured] = field(default_factory=list)
    # The warm-up run: not measured, but a save row's sessions hold its saves too.
    warmup: Measured | None = None

    @property
    def results(self) -> list[WrkResult]:
        return [m.wrk for m in self.measured]

    # Medians over the repeats.
    rps = _median("wrk", "rps")
    p50 = _median("wrk", "p50_ms")
    p99 = _median("wrk", "p99_ms")
    app_cpu_us = _median("app_cpu_us")
    redis_cpu_us = _median("redis_cpu_us")

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


ROW_LABELS = {
    "page_app": "a. app GET / (session with 10 messages)",
    "page_ceiling": "b. ceiling: bare Flask, same template",
    "page_anchor": "c. anchor: stock flask-session GET /",
    "page_app_no_metrics": "a0. app GET / with metrics off (METRICS_PORT=0)",
    "page_app_nginx": "a'. app GET / behind the pod's nginx (as deployed)",
    "page_ceiling_nginx": "b'. ceiling behind the same nginx",
    "page_app_cluster": "a''. app GET / on a local Valkey cluster (3 primaries + 3 replicas)",
    "save_ceiling": "d0. floor: bare Flask POST /persistMessage (form read, 303, nothing else)",
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

    def worker_pids(self) -> set[int]:
        return self.app.worker_pids()


@dataclass(frozen=True)
class Target:
    """What one row loads (server, path, requests) and whose CPU it counts (server, store)."""

    server: Gunicorn | Behind
    store: Store
    path: str
    requests: list[Request]

    def run(self, seconds: int, workdir: Path) -> Measured:
        """One wrk run, measured again while a single worker served it."""
        lopsided = lopsided_requests = 0
        while True:
            measured, busiest = self._run_once(seconds, workdir)
            if busiest <= LOPSIDED_SHARE or lopsided == LOPSIDED_RETRIES:
                measured.lopsided_runs = lopsided
                measured.lopsided_requests = lopsided_requests
                measured.lopsided_kept = busiest > LOPSIDED_SHARE
                return measured
            lopsided += 1
            lopsided_requests += measured.wrk.requests

    def _run_once(self, seconds: int, workdir: Path) -> tuple[Measured, float]:
        """A measurement, and the busiest worker's share of the workers' CPU in it."""
        workers = sorted(self.server.worker_pids())
        workers_before = [cpu_seconds(pid) for pid in workers]
        app_before, redis_before = self.server.cpu_seconds(), self.store.cpu_seconds()
        result = run_wrk(self.server.url + self.path, self.requests, seconds, workdir)
        app_after, redis_after = self.server.cpu_seconds(), self.store.cpu_seconds()
        per_request = 1e6 / max(result.requests, 1)
        measured = Measured(
            result,
            (app_after - app_before) * per_request,
            (redis_after - redis_before) * per_request,
        )
        try:
            spent = [
                cpu_seconds(pid) - before
                for pid, before in zip(workers, workers_before, strict=True)
            ]
        except FileNotFoundError:  # a worker died during the run: no split to judge
            return measured, 0.0
        return measured, max(spent) / sum(spent) if sum(spent) > 0 else 0.0


def page_sessions(
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


def measure_rows(
    plan: Plan,
    targets: dict[str, Target],
    workdir: Path,
    failures: list[str],
    log: Callable[[str], None],
) -> dict[str, Row]:
    """Interleave the variants (rotating the order each repeat) so drift in machine load hits
    every row alike; report medians."""
    rows = {key: Row(key, ROW_LABELS[key]) for key in targets}
    keys = list(targets)
    if plan.warmup:
        for key in keys:
            rows[key].warmup = targets[key].run(plan.warmup, workdir)
    for repeat in range(plan.repeats):
        order = keys[repeat % len(keys) :] + keys[: repeat % len(keys)]
        for key in order:
            measured = targets[key].run(plan.duration, workdir)
            rows[key].measured.append(measured)
            result = measured.wrk
            log(
                f"repeat {repeat + 1}/{plan.repeats} {key}: {result.rps:,.0f} req/s "
                f"p50 {result.p50_ms:.2f} ms p99 {result.p99_ms:.2f} ms, "
                f"app CPU {measured.app_cpu_us:.0f} us/req, Redis {measured.redis_cpu_us:.0f}"
                + (
                    f" (after {measured.lopsided_runs} run(s) one worker served alone"
                    + (", and so did this one" if measured.lopsided_kept else "")
                    + ")"
                    if measured.lopsided_runs
                    else ""
                )
            )
            if result.status_errors or result.socket_errors:
                failures.append(
                    f"{key}: {result.status_errors} non-2xx/3xx responses and "
                    f"{result.socket_errors} socket errors in repeat {repeat + 1}"
                )
    return rows


def verify_saves(clients: list[PageClient], row: Row, failures: list[str], strict: bool) -> str:
    """A 303 alone does not prove a save: count the messages the sessions list now against the
    saves wrk saw answered. The anchor's read-modify-write loses saves that race on one session
    (flask-session issues #71, #149), which is reported; for the app any loss is a failure."""
    runs = [m for m in (row.warmup, *row.measured) if m is not None]
    counted = sum(m.wrk.requests + m.lopsided_requests for m in runs)
    listed = sum(c.message_count() for c in clients) - PAGE_MESSAGES * len(clients)
    # Requests in flight when wrk stops are processed but not counted by wrk.
    slack = CONNECTIONS * sum(1 + m.lopsided_runs for m in runs)
    if counted <= listed <= counted + slack:
        return f"all {counted} answered saves listed"
    if strict or listed > counted + slack:
        failures.append(f"{row.key}: sessions list {listed} new messages, wrk counted {counted}")
        return f"MISMATCH: {listed} listed, {counted} answered"
    return f"{counted - listed} of {counted} answered saves LOST (concurrent saves on a session)"
