"""The fault run: steady load while Valkey is stopped and started again on its port with its
data; what a visitor waits for during the outage, and how soon pages come back."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

from bench.client import PageClient
from bench.plan import PAGE_MESSAGES, Plan
from bench.variants import bench_valkey, our_app, serving, sessions_with_messages
from bench.wrk import Request, WrkResult, run_wrk
from localservers.waits import sleep_until


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


def fault_run(plan: Plan, workdir: Path, logs: Path, failures: list[str]) -> FaultRun | None:
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
                plan.fault_seconds,
                workdir,
                count_statuses=True,
            )

        loader = threading.Thread(target=load)
        started = time.monotonic()
        loader.start()
        sleep_until(started + plan.fault_stop_at)
        server.stop(save=True)
        prober = PageClient(app.port, timeout=5.0)
        prober.cookies = dict(visitor.cookies)
        outage_probe = _probe(prober, 5, until=started + plan.fault_start_at - 0.2)
        sleep_until(started + plan.fault_start_at)
        restart = time.monotonic()
        first_200: list[float] = []
        poll_until = started + plan.fault_seconds + 5
        poll = threading.Thread(
            target=_poll_first_200, args=(poller, restart, poll_until, first_200)
        )
        poll.start()
        server.start()
        ping_after = time.monotonic() - restart
        poll.join()
        loader.join(timeout=plan.fault_seconds + 60)
        wrk_result = result.get("wrk")
        if wrk_result is None:
            failures.append("fault run: wrk produced no result")
            return None
        messages_after = visitor.message_count()
        if messages_after != PAGE_MESSAGES:
            failures.append(f"fault run: session lists {messages_after} messages after restart")
        return FaultRun(
            plan.fault_seconds,
            plan.fault_stop_at,
            plan.fault_start_at,
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
