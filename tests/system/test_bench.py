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

from bench import failover, memory, sizing
from bench.rtt_proxy import RoundTripProxy
from bench.wrk import Request, run_wrk
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
    lost when the old primary takes writes for 0.3 s after the promotion."""
    no_replica, demoted = failover.run(tmp_path, print)
    print(failover.render([no_replica, demoted]))
    assert no_replica.first_303_s is not None and no_replica.first_303_s <= 5
    assert no_replica.without_replica >= no_replica.answered_303 > 0
    assert demoted.lost == 0 and demoted.answered_303 > 0


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
