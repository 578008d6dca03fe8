"""A switchable TCP endpoint on loopback, standing in for ElastiCache's primary endpoint (a DNS
name that moves to the new primary in a failover), for the tests' and the benchmark's failovers.
"""

from __future__ import annotations

import contextlib
import socket
import threading

from localservers import HOST


class SwitchableProxy:
    """A TCP proxy standing in for ElastiCache's primary endpoint (a DNS name).

    New connections go to the current target; connections already open stay where they
    are, as clients that resolved the name before a failover do.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server((HOST, 0))
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
                upstream = socket.create_connection((HOST, self.target_port), timeout=2)
            except OSError:
                downstream.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [downstream, upstream]
            threading.Thread(target=self._pump, args=(downstream, upstream), daemon=True).start()
            threading.Thread(target=self._reply, args=(upstream, downstream), daemon=True).start()

    def _reply(self, source: socket.socket, sink: socket.socket) -> None:
        """The server's bytes to the client (tests/system/faults.SlowLink delays them)."""
        self._pump(source, sink)

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
