"""gunicorn on loopback, started as production starts it: ``gunicorn -c gunicorn.conf.py
'app:create_app()'`` (or another WSGI target, such as the benchmark's comparison apps).

It binds port 0, so the kernel picks a free port and no other process can take it between a
check and the bind; the port is then read back from /proc. Each master runs in a session of
its own, so a master that will not stop is killed with its workers and nothing else.
"""

from __future__ import annotations

import signal
import subprocess
import sys
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

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self, ready_path: str = "/healthz", timeout: float = 60) -> None:
        """Start; return once ``ready_path`` answers 200 (fail at once if gunicorn exits)."""
        self._spawn()
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
        self._spawn()
        assert self.process is not None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise RuntimeError(f"gunicorn {self.name} did not exit:\n{self.log()}") from None

    def _spawn(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    *(sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py"),
                    *("--bind", f"{HOST}:0", self.target),
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


def start_gunicorn(name: str, env: dict[str, str], log_path: Path, target: str = APP) -> Gunicorn:
    """A started ``Gunicorn``: answering /healthz."""
    server = Gunicorn(name, env, log_path, target)
    server.start()
    return server
