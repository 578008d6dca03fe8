"""The benchmark harness works end to end. Nothing here asserts a timing: CI machines
are too noisy for that; the numbers are for people, the structure and the counts for tests."""

from __future__ import annotations

import http.server
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from bench import failover, memory, overload, sizing
from bench.fleet import (
    CacheFigures,
    PodFigures,
    Prices,
    _egress,
    fleet_row,
    render_fleet,
    users_at,
)
from bench.rtt_proxy import RoundTripProxy
from bench.throughput import LOPSIDED_RETRIES, Measured, Target
from bench.wrk import Request, WrkResult, run_wrk
from localservers.valkey import Valkey
from tests.support import REPO_ROOT

needs_wrk = pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk (apt) is not installed")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, str]:
    """One smoke run for the module: it starts Valkey, a six-node Valkey cluster and eight
    gunicorn instances (~30 s), every step once with 1 s of load."""
    if shutil.which("wrk") is None:
        pytest.skip("wrk (apt) is not installed")
    out = tmp_path_factory.mktemp("bench") / "results.md"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--write", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    return proc, out.read_text() if out.exists() else ""


def test_smoke_run_succeeds_and_prints_every_section(smoke) -> None:
    proc, written = smoke
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for row in (
        "a. app GET /",
        "b. ceiling",
        "c. anchor",
        "d0. floor: bare Flask POST /persistMessage",
        "d. app POST /persistMessage",
        "d. anchor POST /persistMessage",
        "a''. app GET / on a local Valkey cluster (3 primaries + 3 replicas)",
        "d''. app POST /persistMessage on the same cluster",
        "e. Save latency",
        "f. Redis work per request",
        "g. Bytes in Redis per session",
        "h. Fault run",
        "a'. app GET / behind the pod's nginx",
        "b'. ceiling behind the same nginx",
        "i. Page view p50/p99 while 25 slow clients are connected",
        "(a)/(b)",
        "- (d0) the floor of a save under this server",
        "(a')/(b)",
        "- the cluster against one Valkey (reported only): page view (a'')/(a)",
    ):
        assert row in proc.stdout
    # --write stores exactly what was printed.
    assert written and written in proc.stdout
    assert "FAILURE" not in proc.stdout


def test_smoke_run_reports_measured_values(smoke) -> None:
    proc, _ = smoke
    text = proc.stdout
    # Both stateful variants stored something for a session with 10 messages.
    assert "| app | `session:{<sha256(sid)>}`" in text
    assert "| anchor | `session:<sid>`" in text
    # The app's saves were all found again in the sessions afterwards, on the cluster too.
    assert "save_app: all" in text
    assert "save_app_cluster: all" in text
    # The cluster rows' Redis commands are counted on the cluster: the read cache works there
    # too, so an unchanged session's page view reads nothing (tests/system/test_cluster.py
    # checks the whole set; a ROLE, the failover check, may land in the count).
    (cluster_view,) = [
        line
        for line in text.splitlines()
        if line.startswith("| app on the cluster | GET / (unchanged session) |")
    ]
    assert "hgetall" not in cluster_view
    # The fault run counted responses by status, 200s among them.
    assert "Responses by status: 200:" in text


def test_a_run_that_one_worker_served_alone_is_measured_again(monkeypatch) -> None:
    """wrk's connections now and then all land on one of the two workers: such a run (by the
    busiest worker's share of the CPU) is measured again, a bounded number of times."""
    shares: list[float] = []

    def run_once(self: Target, seconds: int, workdir: Path) -> tuple[Measured, float]:
        return Measured(WrkResult(100, 1.0, 1.0, 2.0, 0, 0), 500.0, 1.0), shares.pop(0)

    monkeypatch.setattr(Target, "_run_once", run_once)
    target = Target(server=None, store=None, path="/", requests=[])  # type: ignore[arg-type]
    shares[:] = [1.0, 0.9, 0.5, 1.0]
    measured = target.run(1, Path())
    assert (measured.lopsided_runs, measured.lopsided_requests) == (2, 200)
    assert not measured.lopsided_kept
    assert shares == [1.0]
    shares[:] = [1.0] * (LOPSIDED_RETRIES + 2)
    measured = target.run(1, Path())
    assert (measured.lopsided_runs, measured.lopsided_kept) == (LOPSIDED_RETRIES, True)
    assert len(shares) == 1


class _Status500(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(500)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        """Quiet: wrk sends thousands of requests."""


@pytest.fixture
def failing_server() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Status500)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@needs_wrk
def test_wrk_errors_and_statuses_are_counted(failing_server: int, tmp_path: Path) -> None:
    """Non-2xx/3xx responses must be visible, or a broken variant would look fast."""
    url = f"http://127.0.0.1:{failing_server}/"
    result = run_wrk(url, [Request("GET", "")], 1, tmp_path, count_statuses=True, connections=2)
    assert result.requests > 0
    assert result.status_errors == result.requests
    assert result.statuses.get(500, 0) >= result.requests


def test_proxy_counts_round_trips_not_commands(valkey: Valkey) -> None:
    proxy = RoundTripProxy(valkey.port)
    proxy.start()
    try:
        client = redis.Redis(host="127.0.0.1", port=proxy.port, socket_timeout=5)
        client.ping()  # connects (handshake round trips) before counting starts
        before = proxy.snapshot()
        client.set("k", "v")
        with client.pipeline(transaction=False) as pipe:
            pipe.get("k").get("k").get("k").execute()
        client.eval("redis.call('GET', KEYS[1]); return redis.call('GET', KEYS[1])", 1, "k")
        after = proxy.snapshot()
        client.close()
    finally:
        proxy.stop()
    assert after.round_trips - before.round_trips == 3
    assert after.connections == before.connections == 1


def test_worker_memory_stays_bounded_under_many_full_sessions(tmp_path: Path) -> None:
    """A behaviour measured the benchmark's way (bench/memory.py), with the bound of issue 19:
    two gunicorn workers on one Valkey, sessions filled to the 256 KiB byte budget, each viewed
    three times. Without a bound in bytes each worker grew ~40 MB per 300 such sessions, until
    the container's memory limit killed it; a worker's RSS may now grow by at most 64 MB, and
    by at most 10 MB more between 300 and 600 sessions (its read cache is full by then)."""
    before, middle, after = (step.rss_mb for step in memory.run(tmp_path, (0, 300, 600), print))
    for worker in range(2):
        print(
            f"worker {worker}: RSS {before[worker]:.1f} -> {middle[worker]:.1f} -> "
            f"{after[worker]:.1f} MB"
        )
        assert after[worker] - before[worker] <= 64
        assert after[worker] - middle[worker] <= 10


def test_saves_come_back_after_a_failover_that_leaves_no_replica(tmp_path: Path) -> None:
    """bench/failover.py's two failovers, with the app under gunicorn: saves answer 303 again
    within 5 s after the switch to a primary without a replica, and no acknowledged save is
    lost when the old primary takes writes for 0.3 s after the promotion. Its smoke windows:
    5.5 s after the switch (a first 303 later than 5 s fails either way), the cases side by
    side."""
    no_replica, demoted = failover.run(tmp_path, print, failover.SMOKE)
    print(failover.render([no_replica, demoted]))
    assert no_replica.saved_before > 0 and demoted.saved_before > 0
    assert no_replica.first_303_s is not None and no_replica.first_303_s <= 5
    assert no_replica.without_replica >= no_replica.answered_303 > 0
    assert demoted.lost == 0 and demoted.answered_303 > 0


@needs_wrk
def test_a_flooded_pod_refuses_past_its_bound_and_answers_its_probes(tmp_path: Path) -> None:
    """bench/overload.py's flood, short: 300 connections, more than the pod's bound of 128
    requests in flight, for 3 s, each request from an address of its own. Every page is answered
    200 or refused with nginx's 503 (no 502 or 504), and every probe answers 200, through nginx
    and straight to gunicorn. Behaviour, not speed: the probes' times are printed, not asserted."""
    result = overload.run(tmp_path, print, connections=300, seconds=3)
    print(overload.render(result))
    assert set(result.statuses) == {200, 503}, result.statuses
    assert [probe.name for probe in result.probes][:2] == [
        "/healthz through nginx",
        "/readyz through nginx",
    ]
    for probe in result.probes:
        assert probe.answers and {status for status, _ in probe.answers} == {200}, probe


@needs_wrk
def test_sizing_measures_cpu_per_request_and_memory_per_session(tmp_path: Path) -> None:
    """bench/sizing.py's smoke run: the pod (config.env's workers behind nginx.conf, each held to
    its CPU limit from k8s/deployment.yaml) loaded with page views, saves and a mix, every
    request answered; the CPU each container spent per request and Redis's side counted; and
    a session's memory in Valkey growing with its messages."""
    measured = sizing.run(tmp_path, print, smoke=True)
    print(sizing.render(measured))
    pod = measured.pod
    assert 0 < pod.app_request < pod.app_limit and 0 < pod.proxy_request < pod.proxy_limit
    assert pod.workers >= 1
    for run in measured.runs:
        assert run.requests > 0 and run.errors == 0, run
        assert run.app_cpu_s > 0 and run.proxy_cpu_s > 0, run
    views, saves, mix = measured.runs
    # Views of sessions this worker has not read yet go to Redis; every answered save ran the
    # store's script once, and the mix did both.
    assert views.calls.get("hgetall", 0) > 0
    assert saves.calls.get("evalsha", 0) >= saves.requests
    assert mix.calls.get("hgetall", 0) > 0 and 0 < mix.calls.get("evalsha", 0) < mix.requests
    figures = measured.cache_figures()
    assert figures.view_bytes > 0 and figures.save_commands >= 1
    one, ten, hundred = measured.sessions
    assert one.keys == ten.keys == hundred.keys == 1
    assert one.used_memory < ten.used_memory < hundred.used_memory
    assert one.memory_usage < ten.memory_usage < hundred.memory_usage
    # 90 messages of 100 characters more cost at least their 9,000 bytes.
    assert hundred.used_memory - ten.used_memory >= 9_000


# bench/fleet.py's arithmetic on a known input, worked by hand: the sizing table in
# docs/sizing.md is only as right as this.
# 2 ms of CPU per page view, 5 ms per save; the pod's shape as k8s/ has it.
POD = PodFigures(
    view_app_cpu=0.0019,
    view_proxy_cpu=0.0001,
    save_app_cpu=0.0045,
    save_proxy_cpu=0.0005,
    app_limit=1.0,
    proxy_limit=0.5,
    app_request=0.25,
    proxy_request=0.05,
    workers=2,
    page_bytes=4400,
)
CACHE = CacheFigures(
    session_bytes={10: 2048.0},
    view_commands=2.0,
    view_bytes=1024.0,
    save_commands=6.0,
    save_bytes=512.0,
)


def test_a_pod_at_its_limits_is_held_by_the_busier_container() -> None:
    assert POD.at_limit(0.0) == pytest.approx(1 / 0.0019)  # the app's 1 CPU, not nginx's 0.5
    proxy_bound = PodFigures(**{**POD.__dict__, "view_proxy_cpu": 0.001})
    assert proxy_bound.at_limit(0.0) == pytest.approx(0.5 / 0.001)
    # One save in two: the mean of the two costs.
    assert POD.at_limit(0.5) == pytest.approx(1 / 0.0032)


def test_100k_users() -> None:
    row = fleet_row(100_000, POD, CACHE)
    views, saves = 100_000 / 30, 100_000 / 300
    assert (row.views_per_s, row.saves_per_s) == (pytest.approx(views), pytest.approx(saves))
    assert row.cpu == pytest.approx(views * 0.002 + saves * 0.005)  # 8.33 cores
    # The HPA holds each pod at 70 % of its 300m of requests: 0.21 cores, so 8.33 / 0.21 = 39.7.
    assert (row.pods, row.hpa_min, row.hpa_max) == (40, 40, 80)
    assert row.nodes == 7  # 6 pods of 300m per c6a.large's 1.93 allocatable cores
    assert row.cache_gb == pytest.approx(100_000 * 2 * 2048 / 2**30)
    assert row.commands_per_s == pytest.approx(views * 2 + saves * 6)  # 8,667
    # Past a t3's 5,000 commands/s, and m7g.large is cheaper than r7g.large: a primary and a
    # replica, 730 hours.
    assert row.cache == "2 cache.m7g.large"
    assert row.cache_month == pytest.approx(0.1264 * 2 * 730)
    ecpus_per_s = views * 2 + saves * 6  # 1 KB per view moves no more than its 2 commands
    assert row.serverless_month == pytest.approx(
        100_000 * 2 * 2048 / 2**30 * 0.084 * 730 + ecpus_per_s * 3600 * 730 / 1e6 * 0.0023
    )
    assert fleet_row(1_000, POD, CACHE).serverless_month == pytest.approx(
        0.1 * 0.084 * 730 + (1_000 / 30 * 2 + 1_000 / 300 * 6) * 3600 * 730 / 1e6 * 0.0023
    )  # 4 MB stored: billed as the 100 MB floor
    assert row.connections_per_node == 80 * 2 * 2
    # Bytes decide the LCUs: (4,400 + 600) B per view, 600 per save, per hour, per GB.
    assert row.lcus == pytest.approx((views * 5000 + saves * 600) * 3600 / 1e9)
    assert row.month == pytest.approx(sum(row.costs.values()))
    assert row.costs["cache"] == min(row.cache_month, row.serverless_month)


def test_1k_users_sit_on_the_floor() -> None:
    row = fleet_row(1_000, POD, CACHE)
    assert (row.pods, row.hpa_min, row.hpa_max, row.nodes) == (1, 3, 4, 3)
    assert row.cache == "2 cache.t3.micro"
    assert row.limits_first.startswith("nothing")


def test_the_cache_shards_when_one_node_cannot_take_the_commands() -> None:
    row = fleet_row(3_000_000, POD, CACHE)
    # 260,000 commands/s over 100,000 per primary: 3 shards; 2.3 GiB fit one m7g.large.
    assert row.cache == "cluster: 3 shards of 2 cache.m7g.large"
    assert "cache commands/s (shards)" in row.limits_first
    assert "Redis connections" not in row.limits_first


def test_egress_is_priced_tier_by_tier() -> None:
    prices = Prices()
    assert _egress(100, prices) == 0  # the free 100 GB
    billed = 10_000 * 0.09 + 40_000 * 0.085 + 10_000 * 0.07
    assert _egress(60_100, prices) == pytest.approx(billed)


def test_users_per_pod_count() -> None:
    per_user = 0.002 / 30 + 0.005 / 300
    assert users_at(10, POD) == pytest.approx(10 * 0.21 / per_user, abs=1)  # 25,200


def test_a_command_moving_kilobytes_costs_an_ecpu_per_kilobyte() -> None:
    assert CacheFigures.ecpus(1.0, 3 * 1024) == 3  # one HGETALL of a 3 KB session
    assert CacheFigures.ecpus(4.0, 1024) == 4  # small commands: at least one ECPU each


def test_the_rendered_table_has_a_row_per_size_and_the_hpa_line() -> None:
    text = render_fleet(POD, CACHE, hpa_max=10, users=(1_000, 100_000))
    rows = [line for line in text.splitlines() if line.startswith("| 1")]
    assert [row.split(" | ")[0] for row in rows] == ["| 1,000", "| 100,000"]
    assert "| 40 (40/80) | 7 |" in rows[1]
    assert "one pod serves 2,520 active users" in text
    assert "maxReplicas of 10 is reached at 25,200 active users" in text
