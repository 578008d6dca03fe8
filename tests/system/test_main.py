"""`python -m app`: the newcomer's command, with an embedded real Valkey and no REDIS_HOST."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys

import pytest
import requests

from localservers.ports import free_port, listening_port
from localservers.waits import wait_until
from tests.support import REPO_ROOT, csrf_token, listed_messages


def run_local(data_dir, log_path, metrics_port: int = 0) -> tuple[subprocess.Popen, str]:
    """Start `python -m app` on port 0 (the kernel picks a free one); return it and its URL.

    No metrics unless given a port: concurrent runs would collide on the fixed default one.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "SECRET_KEY"))}
    env["LOCAL_DATA_DIR"] = str(data_dir)
    env["METRICS_PORT"] = str(metrics_port)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "app", "--bind", "127.0.0.1:0", "--workers", "1"],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    port = 0

    def ready() -> bool:
        nonlocal port
        assert process.poll() is None, log_path.read_text()
        port = port or listening_port(process.pid, {metrics_port}) or 0
        try:
            return bool(port) and requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).ok
        except requests.ConnectionError:
            return False

    try:
        wait_until(ready, 60, "python -m app to answer")
    except BaseException:
        stop(process)
        raise
    return process, f"http://127.0.0.1:{port}"


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


def test_messages_survive_a_restart_of_the_local_app(tmp_path):
    data_dir, log_path = tmp_path / "data", tmp_path / "app.log"
    browser = requests.Session()
    process, url = run_local(data_dir, log_path)
    try:
        token = csrf_token(browser.get(f"{url}/", timeout=10).text)
        response = browser.post(
            f"{url}/persistMessage", data={"message": "kept", "csrf_token": token}, timeout=10
        )
        assert listed_messages(response.text) == ["kept"]
    finally:
        stop(process)
    assert process.returncode == 0
    log = log_path.read_text()
    assert "REDIS_HOST is unset: started an embedded Valkey" in log
    assert (data_dir / "secret_key").stat().st_mode & 0o077 == 0  # readable by the owner only

    process, url = run_local(data_dir, log_path)
    try:
        page = browser.get(f"{url}/", timeout=10).text
        assert listed_messages(page) == ["kept"]
        # The CSRF cookie from before the restart is still accepted: same local SECRET_KEY.
        response = browser.post(
            f"{url}/persistMessage", data={"message": "again", "csrf_token": token}, timeout=10
        )
        assert listed_messages(response.text) == ["kept", "again"]
    finally:
        stop(process)
    # No Valkey left behind: the embedded server's port (named in the log) no longer answers.
    ports = re.findall(r"started an embedded Valkey on 127\.0\.0\.1:(\d+)", log_path.read_text())
    assert len(ports) == 2
    for valkey_port in set(ports):
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", int(valkey_port)), 2):
            pass


def test_an_address_given_is_the_only_one_the_local_app_listens_on(tmp_path):
    """`python -m app --bind ...` (as run_local passes) must not also take the default 8080:
    with 8080 held by another program, the app still starts."""
    with socket.socket() as other_program:
        other_program.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            other_program.bind(("127.0.0.1", 8080))
            other_program.listen()
        except OSError:
            pass  # something else holds it already: just as good
        process, url = run_local(tmp_path / "data", tmp_path / "app.log")
        try:
            assert requests.get(f"{url}/healthz", timeout=10).ok
        finally:
            stop(process)


def test_the_local_app_serves_every_workers_counts(tmp_path):
    """prometheus_client picks its multiprocess mode when first imported: `python -m app`
    imports the app package before gunicorn.conf.py names the metrics directory, so the
    package must not import it (or the workers would count in memory, and /metrics show 0)."""
    metrics_port = free_port()
    process, url = run_local(tmp_path / "data", tmp_path / "app.log", metrics_port)
    try:
        for _ in range(3):
            assert requests.get(f"{url}/", timeout=10).status_code == 200
        scraped = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
    finally:
        stop(process)
    pattern = r'messageapp_http_request_duration_seconds_count\{[^}]*route="/"[^}]*\} (\S+)'
    assert [float(v) for v in re.findall(pattern, scraped)] == [3.0]


def test_a_second_local_app_on_the_same_data_refuses_to_start(tmp_path):
    """Two `python -m app` on one data directory: the second one started a second Valkey on
    the first one's append-only file before failing on the taken port (found by review). It
    now stops at once with a line saying what to do, and the first one goes on serving."""
    data = tmp_path / "data"
    process, url = run_local(data, tmp_path / "first.log")
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "SECRET_KEY"))}
        second = subprocess.run(
            [sys.executable, "-m", "app", "--bind", "127.0.0.1:0"],
            cwd=REPO_ROOT,
            env={**env, "LOCAL_DATA_DIR": str(data), "METRICS_PORT": "0"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode != 0
        assert f"another `python -m app` is using {data}" in second.stderr
        assert "valkey" not in second.stdout.lower()  # no second server was started
        assert requests.get(f"{url}/healthz", timeout=10).status_code == 200
    finally:
        stop(process)
    restarted, url = run_local(data, tmp_path / "again.log")  # free again once it stopped
    stop(restarted)
