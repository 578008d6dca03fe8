"""`python -m bench.overload`: one pod flooded past what it can serve, and its probes meanwhile.

The pod as deployed: two gunicorn workers behind the repository's nginx.conf, one Valkey. wrk
keeps ``--connections`` connections busy for ``--seconds``, each request from a client address of
its own (X-Forwarded-For from loopback, which nginx believes as it believes the ALB), so nginx's
per-address limit refuses none of them. Meanwhile, one after the other on new connections as the
kubelet's are, a probe of ``/healthz`` and of ``/readyz`` through nginx and one of ``/healthz``
straight to gunicorn (for comparison). Reported: the pages answered 200, those nginx refused with
its 503 (past its bound on requests in flight, ``max_conns`` in nginx.conf), the socket errors,
and each probe's answers and times against the kubelet's 3 s timeout. With ``--pin`` the pod
(gunicorn, nginx and Valkey) runs on CPU 1 and wrk and the probes on CPU 0, as a pod's CPU limit
keeps a flood's client off its CPU. docs/sizing.md ("Past the HPA's maximum") reports a run.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import requests

from bench import progress_log
from bench.variants import bench_valkey, our_app, serving
from bench.wrk import Request, run_wrk
from localservers.nginx import Nginx
from localservers.processes import pin_to_cpu

CONNECTIONS = 2000
SECONDS = 20
PROBE_TIMEOUT = 3.0  # the kubelet's (k8s/deployment.yaml: timeoutSeconds)
PROBE_WAIT = 10.0  # how long a probe here waits before it counts as unanswered
PROBE_PAUSE = 0.25


@dataclass(frozen=True)
class Probe:
    name: str
    answers: tuple[tuple[int | None, float], ...]  # (status, or None unanswered; seconds)

    @property
    def unanswered(self) -> int:
        return sum(status is None for status, _ in self.answers)

    @property
    def worst_answered_s(self) -> float:
        return max((s for status, s in self.answers if status is not None), default=0.0)

    @property
    def over_timeout(self) -> int:
        """Answered after the kubelet's timeout, or not at all: a failed probe."""
        return sum(status is None or seconds > PROBE_TIMEOUT for status, seconds in self.answers)


@dataclass(frozen=True)
class Overload:
    connections: int
    seconds: float
    statuses: dict[int, int]
    socket_errors: int  # connect, read and write errors
    slow: int  # wrk's timeouts: requests still unanswered at one of its 2 s checks (answered later)
    probes: tuple[Probe, ...]


def _probe(url: str) -> tuple[int | None, float]:
    start = time.monotonic()
    try:
        status: int | None = requests.get(url, timeout=PROBE_WAIT).status_code
    except requests.RequestException:
        status = None
    return status, time.monotonic() - start


def run(
    workdir: Path,
    log: Callable[[str], None],
    connections: int = CONNECTIONS,
    seconds: float = SECONDS,
    pin: bool = False,
) -> Overload:
    valkey = bench_valkey(workdir / "valkey")
    with serving(valkey, lambda port: our_app(port, 0, workdir)) as app:
        proxy = Nginx(app.port, workdir / "nginx.log")
        try:
            proxy.start()
            assert app.process is not None and proxy.process is not None and valkey.pid
            if pin:
                pod = [app.process.pid, *app.worker_pids(), proxy.process.pid]
                for pid in [*pod, *proxy.worker_pids(), valkey.pid]:
                    pin_to_cpu(pid, 1)
                # This thread: the probe thread and wrk, started from it, inherit it.
                os.sched_setaffinity(0, {0})
            targets = {
                "/healthz through nginx": f"{proxy.url}/healthz",
                "/readyz through nginx": f"{proxy.url}/readyz",
                "/healthz straight to gunicorn": f"{app.url}/healthz",
            }
            answers: dict[str, list[tuple[int | None, float]]] = {name: [] for name in targets}
            done = threading.Event()

            def probe_meanwhile() -> None:
                while not done.is_set():
                    for name, url in targets.items():
                        answers[name].append(_probe(url))
                    done.wait(PROBE_PAUSE)

            prober = threading.Thread(target=probe_meanwhile, daemon=True)
            log(f"{connections} connections for {seconds:.0f} s, probes meanwhile")
            prober.start()
            try:
                flood = run_wrk(
                    f"{proxy.url}/",
                    [Request("GET", "")],
                    seconds,
                    workdir,
                    count_statuses=True,
                    connections=connections,
                    spread_clients=True,
                )
            finally:
                done.set()
                prober.join(timeout=PROBE_WAIT * 3 + 5)
        finally:
            proxy.stop()
    return Overload(
        connections,
        flood.seconds,
        flood.statuses,
        flood.socket_errors - flood.timeouts,
        flood.timeouts,
        tuple(Probe(name, tuple(found)) for name, found in answers.items()),
    )


def render(result: Overload) -> str:
    statuses = ", ".join(f"{n:,} {s}" for s, n in sorted(result.statuses.items()))
    lines = [
        f"{result.connections:,} connections for {result.seconds:.0f} s: answers {statuses} "
        f"(wrk's timeouts, answers still awaited after 2 s: {result.slow:,}); socket errors "
        f"{result.socket_errors:,}",
        "",
        "| probe | probes | answered 200 | unanswered in 10 s | over 3 s or unanswered | "
        "worst answered, s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for probe in result.probes:
        ok = sum(status == 200 for status, _ in probe.answers)
        lines.append(
            f"| {probe.name} | {len(probe.answers)} | {ok} | {probe.unanswered} | "
            f"{probe.over_timeout} | {probe.worst_answered_s:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.overload", description=__doc__)
    parser.add_argument("--connections", type=int, default=CONNECTIONS)
    parser.add_argument("--seconds", type=float, default=SECONDS)
    parser.add_argument("--pin", action="store_true", help="pod on CPU 1, wrk and probes on CPU 0")
    args = parser.parse_args(argv)

    log = progress_log("overload")

    with tempfile.TemporaryDirectory(prefix="bench-overload-") as workdir:
        print(render(run(Path(workdir), log, args.connections, args.seconds, args.pin)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
