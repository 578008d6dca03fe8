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

from .support import ROOT, csrf_token, free_port, listed_messages, wait_until


def run_local(data_dir, port: int, log_path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "SECRET_KEY"))}
    env["LOCAL_DATA_DIR"] = str(data_dir)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "app", "--bind", f"127.0.0.1:{port}", "--workers", "1"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def ready() -> bool:
        assert process.poll() is None, log_path.read_text()
        try:
            return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).ok
        except requests.ConnectionError:
            return False

    wait_until(ready, 30, "python -m app to answer")
    return process


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


def test_messages_survive_a_restart_of_the_local_app(tmp_path):
    data_dir, log_path = tmp_path / "data", tmp_path / "app.log"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    browser = requests.Session()
    process = run_local(data_dir, port, log_path)
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

    process = run_local(data_dir, port, log_path)
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
