"""Slow clients: connections that send a request a byte a second and never finish it, the way a
slow or hostile client ties up whatever reads its request. Kept open (and re-opened when the
server closes them) while page views are measured beside them, behind the pod's nginx and
straight to gunicorn."""

from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from bench.plan import Plan
from bench.throughput import Behind
from bench.wrk import Request, WrkResult, run_wrk
from localservers import HOST
from localservers.gunicorn import Gunicorn

HEADER_START = b"GET / HTTP/1.1\r\nHost: bench\r\nX-Slow: "
BODY_START = (
    b"POST /persistMessage HTTP/1.1\r\nHost: bench\r\n"
    b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 10000\r\n\r\nmessage="
)


class SlowClients:
    """`headers` connections trickling a header, `bodies` trickling a body, one byte per
    connection per second; a connection the server closes is opened again at once."""

    def __init__(self, port: int, headers: int, bodies: int) -> None:
        self.port = port
        self.starts = [HEADER_START] * headers + [BODY_START] * bodies
        self.socks: list[socket.socket | None] = [None] * len(self.starts)
        self.reopened = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _open(self, index: int) -> None:
        try:
            sock = socket.create_connection((HOST, self.port), timeout=2)
            sock.sendall(self.starts[index])
        except OSError:
            self.socks[index] = None
            return
        sock.settimeout(0)
        self.socks[index] = sock

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            for index, sock in enumerate(self.socks):
                try:
                    if sock is None:
                        raise OSError
                    sock.send(b"a")
                except OSError:
                    if sock is not None:
                        sock.close()
                    self.reopened += 1
                    self._open(index)

    def __enter__(self) -> SlowClients:
        for index in range(len(self.starts)):
            self._open(index)
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(5)
        for sock in self.socks:
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()


@dataclass
class SlowRun:
    """Page views while slow clients hold connections: behind the pod's nginx, and straight
    to gunicorn (what the pod did before nginx)."""

    headers: int
    bodies: int
    seconds: int
    proxied: WrkResult
    bare: WrkResult
    reopened_proxied: int


def slow_clients(
    plan: Plan,
    proxied: Behind,
    bare: Gunicorn,
    requests: list[Request],
    workdir: Path,
) -> SlowRun:
    """wrk page views while slow clients trickle requests to the same server. One short run
    each: nginx closes a slow header after 10 s (it is re-opened at once), and bare gunicorn
    answers nothing at all once its two workers are held by slow requests."""
    seconds = min(plan.duration, 5)
    with SlowClients(proxied.proxy.port, plan.slow_headers, plan.slow_bodies) as slow:
        behind = run_wrk(proxied.url + "/", requests, seconds, workdir, count_statuses=True)
        reopened = slow.reopened
    with SlowClients(bare.port, plan.slow_headers, plan.slow_bodies):
        direct = run_wrk(bare.url + "/", requests, seconds, workdir, count_statuses=True)
    return SlowRun(plan.slow_headers, plan.slow_bodies, seconds, behind, direct, reopened)
