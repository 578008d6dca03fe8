"""gunicorn on loopback, started as production starts it: ``gunicorn -c gunicorn.conf.py
'app:create_app()'`` (or another WSGI target, such as the benchmark's comparison apps).

It binds port 0, so the kernel picks a free port and no other process can take it between a
check and the bind; the port is then read back from /proc. Each master runs in a session of
its own, so a master that will not stop is killed with its workers and nothing else.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from localservers import HOST, REPO_ROOT
from localservers.ports import listening_port
from localservers.processes import child_pids, cpu_seconds, stop_process
from localservers.waits import answers_200, wait_until

APP = "app:create_app()"


@dataclass
class Gunicorn:
    """One gunicorn master. ``env`` is the whole environment it runs with; the app reads its
    settings from there, gunicorn.conf.py its worker count (``WEB_CONCURRENCY``)."""

    name: str
    env: dict[str, str]
    log_path: Path
    target: str = APP
    port: int = 0
    process: subprocess.Popen | None = None
    # A command to run gunicorn through (``ip netns exec NAME``), and its listen address: port
    # 0 on loopback, or None for the settings' own (GUNICORN_BIND), as a pod has it.
    prefix: tuple[str, ...] = ()
    bind: str | None = f"{HOST}:0"

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self, ready_path: str = "/healthz", timeout: float = 60) -> None:
        """Start; return once ``ready_path`` answers 200 (fail at once if gunicorn exits)."""
        self.spawn()
        self.wait_ready(ready_path, timeout)

    def wait_ready(self, ready_path: str = "/healthz", timeout: float = 60) -> None:
        """After ``spawn``: return once ``ready_path`` answers 200 (stopped if it never does)."""
        assert self.process is not None
        process = self.process
        metrics = {int(self.env.get("METRICS_PORT") or 9090)}

        def ready() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"gunicorn {self.name} exited:\n{self.log()}")
            if not self.port:
                self.port = listening_port(process.pid, besides=metrics) or 0
                return False
            return answers_200(self.port, ready_path)  # False until a worker has booted

        try:
            wait_until(ready, timeout, f"gunicorn {self.name} to answer {ready_path}")
        except BaseException:
            self.stop()
            raise

    def refused(self, timeout: float = 60) -> int:
        """Start a gunicorn that is expected to refuse start-up: wait for it to exit by itself
        and return its exit code (what it printed is in ``log()``)."""
        self.spawn()
        assert self.process is not None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise RuntimeError(f"gunicorn {self.name} did not exit:\n{self.log()}") from None

    def spawn(self) -> None:
        """Start, without waiting for it to answer (``start`` waits)."""
        bind = () if self.bind is None else ("--bind", self.bind)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    *self.prefix,
                    *(sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py"),
                    *(*bind, self.target),
                ],
                cwd=REPO_ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        """Stop the master (SIGTERM: workers finish their requests); its exit code."""
        if self.process is None:
            return None
        return stop_process(self.process, sig, timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def worker_pids(self) -> set[int]:
        assert self.process is not None
        return child_pids(self.process.pid)

    def cpu_seconds(self) -> float:
        """The workers' CPU time (the master only supervises)."""
        return sum(cpu_seconds(pid) for pid in self.worker_pids())


def stop_together(servers: Iterable[Gunicorn]) -> None:
    """Stop several gunicorns at once, at a test's or a run's end, where nothing is left to
    drain: SIGTERM to every master, then SIGKILL to its workers, which the master reaps before
    it exits as it always does (its exit hooks run: the metrics directory is removed).

    A worker stopped by SIGTERM alone keeps its kept-alive connections open for 2 s (gunicorn
    27's STOP_KEEPALIVE_LINGER), one server after another; SIGQUIT, gunicorn's quick shutdown,
    now and then hung a gthread worker until the master's 20 s graceful_timeout (its handler
    shuts the thread pool down inside a signal handler). The drain has tests of its own, which
    send SIGTERM and wait."""
    running = [s for s in servers if s.process is not None and s.process.poll() is None]
    for server in running:
        server.process.send_signal(signal.SIGTERM)
    for server in running:
        for worker in server.worker_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker, signal.SIGKILL)
    for server in running:
        server.stop()


def start_gunicorn(name: str, env: dict[str, str], log_path: Path, target: str = APP) -> Gunicorn:
    """A started ``Gunicorn``: answering /healthz."""
    server = Gunicorn(name, env, log_path, target)
    server.start()
    return server


def start_together(servers: list[Gunicorn]) -> None:
    """Start several at once (each boots in its own processes), returning once all answer
    /healthz; if one never does, all are stopped."""
    try:
        for server in servers:
            server.spawn()
        for server in servers:
            server.wait_ready()
    except BaseException:
        stop_together(servers)
        raise
