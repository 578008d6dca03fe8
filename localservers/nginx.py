"""nginx with the repository's nginx.conf in front of a gunicorn, as the pod runs it, moved to
loopback ports and a private directory (Debian's nginx runs it unprivileged, or as root)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from localservers import HOST, REPO_ROOT, MissingTool
from localservers.ports import free_port
from localservers.processes import child_pids, cpu_seconds, stop_process
from localservers.waits import answers_200, wait_until


@dataclass
class Nginx:
    """nginx.conf on ``port``, proxying to the gunicorn on ``upstream_port``."""

    upstream_port: int
    log_path: Path
    # The app's settings the sidecar is given (MESSAGE_MAX_LENGTH), as in k8s/deployment.yaml.
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None
    workdir: Path | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def config(self, workdir: Path) -> str:
        """nginx.conf with its port, upstream and temp directory replaced, nothing else."""
        text = (REPO_ROOT / "nginx.conf").read_text()
        for old, new in (
            ("listen 8080;", f"listen {HOST}:{self.port};"),
            ("server 127.0.0.1:8000", f"server {HOST}:{self.upstream_port}"),  # both upstreams
            ("/tmp/nginx", str(workdir)),
        ):
            if old not in text:
                raise RuntimeError(f"nginx.conf no longer contains {old!r}; update {__name__}")
            text = text.replace(old, new)
        return text

    def start(self) -> None:
        """Start; return once /healthz answers 200 through it."""
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        if not Path(binary).exists():
            raise MissingTool("nginx is not installed (apt-get install nginx-light)")
        # Its own directory under /tmp, world-traversable: run as root, nginx's workers switch
        # to an unprivileged user that must reach the config and the temp directories.
        self.workdir = Path(tempfile.mkdtemp(prefix="nginx-"))
        self.workdir.chmod(0o755)
        conf = self.workdir / "nginx.conf"
        conf.write_text(self.config(self.workdir))
        # The body limits, written as the pod's sidecar writes them before starting nginx.
        with (self.workdir / "limits.conf").open("wb") as limits:
            subprocess.run(
                [sys.executable, "-m", "app.proxy"],
                cwd=REPO_ROOT,
                env={**os.environ, **self.env},
                stdout=limits,
                check=True,
                timeout=60,
            )
        with self.log_path.open("ab") as log:
            process = self.process = subprocess.Popen(
                [binary, "-c", str(conf), "-p", str(self.workdir)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

        def ready() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"nginx exited early; log: {self.log_path}")
            return answers_200(self.port)

        wait_until(ready, 30, "nginx to answer /healthz")

    def worker_pids(self) -> set[int]:
        assert self.process is not None
        return child_pids(self.process.pid)

    def cpu_seconds(self) -> float:
        """The nginx workers' CPU time: what the proxy adds to every request."""
        return sum(cpu_seconds(pid) for pid in self.worker_pids())

    def stop(self, sig: int = signal.SIGQUIT) -> None:
        """SIGQUIT finishes open requests first; SIGTERM (what the kubelet sends the sidecar)
        closes them at once."""
        if self.process is not None:
            stop_process(self.process, sig, timeout=15)
            self.process = None
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
