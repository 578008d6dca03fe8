"""haproxy on loopback: round robin over several gunicorns, like a load balancer without
stickiness, with its runtime API on a unix socket (to take a server out, as a rollout does).
By request (mode http, as the ALB balances) or by connection (mode tcp, as the NLB does: every
request of a kept-alive connection goes to the same server)."""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

from localservers import HOST, MissingTool
from localservers.ports import free_port
from localservers.processes import stop_process
from localservers.waits import answers_200, wait_until


class Haproxy:
    """Round robin over ``servers`` (name: port) by request, or by connection with
    ``mode="tcp"``; its files in ``directory``."""

    def __init__(self, directory: Path, servers: dict[str, int], mode: str = "http") -> None:
        if mode not in ("http", "tcp"):
            raise ValueError(f"mode {mode!r}: http or tcp")
        self.directory = directory
        self.servers = servers
        self.mode = mode
        self.admin = directory / "haproxy.sock"
        self.log_path = directory / "haproxy.log"
        self.port = 0
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> None:
        """Start; return once /healthz answers 200 through it. haproxy cannot bind port 0 and
        report it: a free port, and another one should a concurrent run take it first
        (haproxy then exits at once)."""
        if shutil.which("haproxy") is None:
            raise MissingTool("haproxy is not installed (apt-get install haproxy)")
        backends = "\n".join(f"    server {n} {HOST}:{p}" for n, p in self.servers.items())
        for attempt in range(3):
            self.port = free_port()
            config = self.directory / "haproxy.cfg"
            config.write_text(
                f"global\n    maxconn 256\n    stats socket {self.admin} mode 600 level admin\n"
                # A second process binding the same port must fail, not share it silently.
                "    noreuseport\n"
                f"defaults\n    mode {self.mode}\n    timeout connect 2s\n"
                "    timeout client 15s\n    timeout server 15s\n"
                f"frontend web\n    bind {HOST}:{self.port}\n    default_backend replicas\n"
                f"backend replicas\n    balance roundrobin\n{backends}\n"
            )
            with self.log_path.open("ab") as log:
                process = self.process = subprocess.Popen(
                    ["haproxy", "-f", str(config), "-db"],
                    stdout=log,
                    stderr=log,
                    start_new_session=True,
                )
            wait_until(
                lambda p=process: p.poll() is not None or answers_200(self.port), 30, "haproxy"
            )
            if process.poll() is None:
                return
            if attempt == 2:
                log_text = self.log_path.read_text(errors="replace")
                raise RuntimeError(f"haproxy exited with {process.returncode}:\n{log_text}")

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
        if self.process is not None:
            stop_process(self.process, timeout=25)
