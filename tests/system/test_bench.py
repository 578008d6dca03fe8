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
    assert "| app | `session:{<sid>}`" in text
    assert "| anchor | `session:<sid>`" in text
    # The app's saves were all found again in the sessions afterwards, on the cluster too.
    assert "save_app: all" in text
    assert "save_app_cluster: all" in text
    # The cluster rows' Redis commands are counted on the cluster: no read cache there, so a
    # page view costs one HGETALL (tests/system/test_cluster.py checks the whole set).
    assert "| app on the cluster | GET / (unchanged session) | hgetall 1 | 1.00 | - |" in text
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
