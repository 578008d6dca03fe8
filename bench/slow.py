"""Slow clients: connections that send a request a byte a second and never finish it, the way a
slow or hostile client ties up whatever reads its request. Kept open (and re-opened when the
server closes them) while a measurement runs beside them."""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType

from localservers import HOST

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
