"""`python -m bench.dashboard`: the picture in docs/observability.md, from a real local run.

Starts a real Valkey and the app under gunicorn (two workers, metrics on), puts steady page-view
load on it with wrk, stops Valkey for a while and starts it again on the same data, and scrapes
the app's own /metrics every second throughout. The plot shows what a dashboard of those metrics
shows: request rate by outcome, p50/p99 latency, and Redis errors and fail-fast 503s, with the
outage shaded. Nothing is asserted: the image is for people (tests/system/test_metrics.py checks
counts).
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families

from bench.variants import bench_valkey, our_app, serving, sessions_with_messages
from bench.wrk import Request, run_wrk
from localservers.waits import sleep_until

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "docs" / "dashboard.png"
HISTOGRAM = "messageapp_http_request_duration_seconds"


@dataclass
class Scrape:
    at: float  # seconds since the load started
    requests: dict[str, float]  # status class ("2xx", "5xx", ...) -> count so far
    buckets: list[tuple[float, float]]  # (le, cumulative count) of page views, all statuses
    redis_errors: float
    fail_fast: float


def scrape(port: int, at: float) -> Scrape:
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    by_status: dict[str, float] = {}
    buckets: dict[float, float] = {}
    errors = fail_fast = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == HISTOGRAM + "_count" and labels["route"] == "/":
                key = labels["status"][0] + "xx"
                by_status[key] = by_status.get(key, 0.0) + sample.value
            elif sample.name == HISTOGRAM + "_bucket" and labels["route"] == "/":
                le = float(labels["le"])
                buckets[le] = buckets.get(le, 0.0) + sample.value
            elif sample.name == "messageapp_redis_errors_total":
                errors += sample.value
            elif sample.name == "messageapp_fail_fast_responses_total":
                fail_fast += sample.value
    return Scrape(at, by_status, sorted(buckets.items()), errors, fail_fast)


def quantile(q: float, before: Scrape, after: Scrape) -> float:
    """Prometheus's histogram_quantile over the requests between two scrapes (NaN if none)."""
    counts = [(le, n - m) for (le, n), (_, m) in zip(after.buckets, before.buckets, strict=True)]
    total = counts[-1][1] if counts else 0.0
    if total <= 0:
        return math.nan
    rank = q * total
    lower, below = 0.0, 0.0
    for le, cumulative in counts:
        if cumulative >= rank:
            if math.isinf(le):
                return lower
            return lower + (le - lower) * (rank - below) / max(cumulative - below, 1e-9)
        lower, below = le, cumulative
    return lower


def record(seconds: int, outage: tuple[float, float], workdir: Path) -> list[Scrape]:
    """The run itself: load for `seconds`, Valkey away during `outage`, a scrape each second."""
    server = bench_valkey(workdir / "valkey")
    with serving(server, lambda port: our_app(port, 0, workdir, name="app-dashboard")) as app:
        metrics_port = int(app.env["METRICS_PORT"])
        visitor = sessions_with_messages(app.port, 1, 10)[0]
        load = threading.Thread(
            target=run_wrk,
            args=(app.url + "/", [Request("GET", visitor.cookie_header)], seconds, workdir),
            kwargs={"connections": 8, "threads": 1},
        )
        scrapes: list[Scrape] = []
        started = time.monotonic()
        load.start()
        stopped = restarted = False
        for tick in range(seconds + 2):
            sleep_until(started + tick)
            at = time.monotonic() - started
            if not stopped and at >= outage[0]:
                server.stop(save=True)
                stopped = True
            if stopped and not restarted and at >= outage[1]:
                server.start()
                restarted = True
            scrapes.append(scrape(metrics_port, at))
        load.join(timeout=seconds + 60)
    return scrapes


def plot(scrapes: list[Scrape], outage: tuple[float, float], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = list(itertools.pairwise(scrapes))
    at = [b.at for _, b in pairs]

    def rate(value: float, before: float, a: Scrape, b: Scrape) -> float:
        return (value - before) / (b.at - a.at)

    ok = [
        rate(b.requests.get("2xx", 0), a.requests.get("2xx", 0), a, b)
        + rate(b.requests.get("3xx", 0), a.requests.get("3xx", 0), a, b)
        for a, b in pairs
    ]
    failed = [rate(b.requests.get("5xx", 0), a.requests.get("5xx", 0), a, b) for a, b in pairs]
    p50 = [quantile(0.5, a, b) * 1000 for a, b in pairs]
    p99 = [quantile(0.99, a, b) * 1000 for a, b in pairs]
    errors = [rate(b.redis_errors, a.redis_errors, a, b) for a, b in pairs]
    fast = [rate(b.fail_fast, a.fail_fast, a, b) for a, b in pairs]

    fig, axes = plt.subplots(3, 1, figsize=(10, 7.5), sharex=True, constrained_layout=True)
    fig.suptitle(
        "message app under load through a Redis outage - from its own /metrics "
        f"(python -m bench.dashboard, {time.strftime('%Y-%m-%d', time.gmtime())})"
    )
    axes[0].stackplot(
        at, ok, failed, labels=["200/3xx", "5xx (503)"], colors=["#4c9f70", "#d1495b"]
    )
    axes[0].set_ylabel("page views / s")
    axes[1].plot(at, p50, label="p50", color="#2e86ab")
    axes[1].plot(at, p99, label="p99", color="#f18f01")
    axes[1].set_yscale("log")
    axes[1].set_ylabel("latency, ms")
    axes[2].plot(at, errors, label="Redis errors (after retries)", color="#d1495b")
    axes[2].plot(at, fast, label="503s answered fail-fast", color="#6c757d")
    axes[2].set_ylabel("per second")
    axes[2].set_xlabel("seconds since the load started")
    for axis in axes:
        axis.axvspan(*outage, color="#999999", alpha=0.2, label="Valkey stopped")
        axis.legend(loc="upper right", fontsize="small")
        axis.grid(alpha=0.3)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dashboard", description=__doc__)
    parser.add_argument("--seconds", type=int, default=40, help="length of the run (default 40)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="PNG to write")
    args = parser.parse_args(argv)
    if args.seconds < 10:
        parser.error("--seconds must be at least 10")
    outage = (args.seconds * 0.3, args.seconds * 0.55)
    with tempfile.TemporaryDirectory(prefix="dashboard-") as workdir:
        scrapes = record(args.seconds, outage, Path(workdir))
    plot(scrapes, outage, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
