"""Redis faults on loopback: Valkey servers set up for replication, a switchable endpoint,
stalls. The servers come from the one Valkey launcher (``localservers.valkey.Valkey``) with
server options; every process listens on 127.0.0.1 and is stopped by PID.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from localservers.valkey import Valkey
from localservers.waits import wait_until

# A busy script blocks the whole server; TIME does not advance inside a script, os.clock does.
_BUSY = "local t = os.clock() while os.clock() - t < tonumber(ARGV[1]) do end return 1"


class ValkeyProcess(Valkey):
    """One Valkey (the shared launcher) set up for replication and faults: diskless
    replication at once, no AOF, server options such as ``maxmemory="20mb"``; started."""

    def __init__(self, directory: Path, **options: str) -> None:
        super().__init__(
            directory,
            appendonly="no",
            repl_diskless_sync="yes",
            repl_diskless_sync_delay="0",
            **options,
        )
        self.start()

    def client(self, socket_timeout: float = 5, **options: Any) -> redis.Redis:
        # No retries: a test's own command must never be sent twice.
        return super().client(socket_timeout=socket_timeout, retry=Retry(NoBackoff(), 0), **options)


class SwitchableProxy:
    """A TCP proxy standing in for ElastiCache's primary endpoint (a DNS name).

    New connections go to the current target; connections already open stay where they
    are, as clients that resolved the name before a failover do.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._open = True
        threading.Thread(target=self._accept, daemon=True).start()

    def switch(self, target_port: int) -> None:
        self.target_port = target_port

    def _accept(self) -> None:
        while self._open:
            try:
                downstream, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=2)
            except OSError:
                downstream.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [downstream, upstream]
            for source, sink in ((downstream, upstream), (upstream, downstream)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._open = False
        self.listener.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.close()


def busy(port: int) -> bool:
    """True while the server accepts connections but answers nothing (a script is running)."""
    # A raw socket: redis-py would retry, and its handshake would block too.
    with socket.create_connection(("127.0.0.1", port), timeout=1) as probe:
        probe.sendall(b"PING\r\n")
        probe.settimeout(0.05)
        try:
            return not probe.recv(16)
        except TimeoutError:
            return True


@contextlib.contextmanager
def stalled(server: ValkeyProcess, seconds: float):
    """Block the server with a busy script for ``seconds`` of its CPU time (longer on a busy
    machine); yields once the stall has begun, returns once the server answers again."""
    runner = threading.Thread(
        target=lambda: server.client(socket_timeout=120).eval(_BUSY, 0, seconds), daemon=True
    )
    started = time.monotonic()
    runner.start()
    wait_until(lambda: busy(server.port) or not runner.is_alive(), 5, "the stall to begin")
    try:
        yield started
    finally:
        runner.join(120)
        wait_until(lambda: not busy(server.port), 30, "the stall to end")
