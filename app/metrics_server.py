"""The gunicorn master's side of the metrics: it serves the sum of every worker's files, and
folds a dead worker's files into one file for all dead workers.

Each worker writes its counts to its own files in the metrics directory (metrics_dir.py), named
by its pid; prometheus_client sums whatever files are there at each scrape, and leaves a dead
worker's files in place so that its counts stay in the totals. Every worker restart
(max_requests, a crash, an out-of-memory kill, SIGHUP) would then add files for good, and every
scrape read them all (figures in docs/observability.md). prometheus_client has no call that
merges files, so ``worker_exited`` adds the dead worker's
values into ``<kind>_dead.db`` and removes its files: the directory holds the live workers'
files and one per kind for the dead, however many have died, and every total stays the same.
The listener holds at most MAX_SCRAPES connections, none for long (``_Listener``).

Called from gunicorn.conf.py's hooks: ``serve`` (when_ready), ``close_in_worker`` (post_fork),
``worker_exited`` (child_exit).
"""

from __future__ import annotations

import io
import ipaddress
import logging
import os
import socket
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app, multiprocess
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.mmap_dict import MmapedDict

from .config import Settings

log = logging.getLogger(__name__)

# The kinds of file whose values are each process's own counts, to be added up: counters,
# summaries and histograms (whose buckets prometheus_client accumulates only when reading).
# Gauges are not added: mark_process_dead drops a dead process's live gauges, and a gauge of
# another mode stays its own file, as prometheus_client means it to (the app has none).
_ADDED_KINDS = ("counter", "histogram", "summary")
DEAD = "dead"  # in place of a pid in the dead workers' file names: counter_dead.db
# A file's first 8 bytes say how much of it is used (prometheus_client.mmap_dict).
_HEADER_BYTES = 8

# Connections the metrics listener serves at once (a scraper or two, someone with curl); those
# past it are closed at once. Each holds a thread of the gunicorn master.
MAX_SCRAPES = 8
# A scraper sends its request at once and reads the answer (a few KB) in milliseconds.
SCRAPE_TIMEOUT_SECONDS = 5.0

# Held while a scrape reads the files and while a dead worker's are folded, so that a scrape
# sees a dead worker's counts exactly once: in its own files, or in the dead workers'.
_files_lock = threading.Lock()
# The master's metrics listener, which its workers close (they are forked from the master).
_listener: WSGIServer | None = None

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class WorkerFiles:
    """prometheus_client's MultiProcessCollector, but never reading while files are folded,
    nor a file a starting worker has only just created.

    Such a file is empty for a moment (MmapedDict opens it, then sizes it), and
    prometheus_client's reader fails on it: measured, 3 scrapes in 150 worker restarts
    answered 500. An empty file holds no counts yet, so leaving it out loses nothing.
    """

    def __init__(self, directory: Path) -> None:
        self._directory = directory

    def collect(self) -> Iterable[Any]:
        with _files_lock:
            files = [str(path) for path in self._directory.glob("*.db") if _written(path)]
            return list(multiprocess.MultiProcessCollector.merge(files, accumulate=True))


def serve(settings: Settings, directory: Path) -> None:
    """In the gunicorn master: serve the workers' summed metrics on METRICS_HOST:METRICS_PORT.

    A port already taken is logged, not fatal: users are still served.
    """
    global _listener
    registry = CollectorRegistry()
    registry.register(WorkerFiles(directory))
    host, port = settings.metrics_host, settings.metrics_port
    try:
        _listener = make_server(
            host, port, _scrapes(registry), _listener_class(host), _QuietHandler
        )
    except OSError as exc:
        log.error("metrics are not served: cannot listen on %s:%s: %s", host, port, exc)
        return
    threading.Thread(target=_listener.serve_forever, name="metrics", daemon=True).start()
    log.info("metrics served on http://%s:%s/metrics", host, port)


class _Listener(ThreadingWSGIServer):
    """prometheus_client's threaded server, serving at most MAX_SCRAPES connections at once.

    What its ``start_http_server`` builds, with bounds it has no option for: there, every
    connection held a thread of the master for as long as the client kept it open (measured:
    500 idle connections, 500 threads and 13 MB more, still there 15 s later), so enough of
    them would take the container past its memory limit, workers and all. Here a connection
    past the limit is closed at once (the scrape fails; the pod does not), and one whose
    request takes longer than SCRAPE_TIMEOUT_SECONDS in all is dropped (``_QuietHandler``).
    """

    # socketserver's 5 would have the kernel drop connections while a burst is turned away.
    request_queue_size = 64

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._slots = threading.BoundedSemaphore(MAX_SCRAPES)
        super().__init__(*args, **kwargs)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            log.warning(
                "metrics: %d connections open already: closing one from %s",
                MAX_SCRAPES,
                client_address[0],
            )
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)  # starts its thread
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection that failed (timed out, reset): one line, not socketserver's traceback
        on stderr. (A scrape that fails is ``_scrapes``'s.)"""
        log.info("metrics: connection from %s dropped: %r", client_address[0], sys.exc_info()[1])


def _scrapes(registry: CollectorRegistry) -> WSGIApp:
    """prometheus_client's WSGI app, with a scrape that fails (a metrics file it cannot read)
    answered 500 and logged as one line with its traceback, where wsgiref would print the
    traceback to stderr, line by line, on every scrape."""
    metrics_app = make_wsgi_app(registry)

    def scrape(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        try:
            return metrics_app(environ, start_response)
        except Exception:
            log.exception("metrics: a scrape failed")
            start_response(
                "500 Internal Server Error",
                [("Content-Type", "text/plain; charset=utf-8")],
                sys.exc_info(),
            )
            return [b"The metrics could not be read; the pod's log says why.\n"]

    return scrape


def _listener_class(host: str) -> type[_Listener]:
    """The listener for ``host``'s address family (METRICS_HOST may be an IPv6 address)."""
    family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    return type("MetricsListener", (_Listener,), {"address_family": family})


class _QuietHandler(WSGIRequestHandler):
    """No line per scrape (as prometheus_client's own), and SCRAPE_TIMEOUT_SECONDS for the whole
    request: a socket timeout bounds each read only, and a client sending a byte every few
    seconds would hold its connection (and with 8 such, every scrape) for as long as it liked."""

    timeout = SCRAPE_TIMEOUT_SECONDS

    def setup(self) -> None:
        super().setup()
        self.rfile.close()
        deadline = time.monotonic() + SCRAPE_TIMEOUT_SECONDS
        self.rfile = io.BufferedReader(_ReadBefore(self.connection, deadline))

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not logged."""


class _ReadBefore(io.RawIOBase):
    """A socket's reads, each given what is left until ``deadline`` (time.monotonic())."""

    def __init__(self, connection: socket.socket, deadline: float) -> None:
        self._connection = connection
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request took too long")
        self._connection.settimeout(left)
        return self._connection.recv_into(buffer)


def close_in_worker() -> None:
    """In a worker, just forked: close its copy of the master's metrics listener.

    A worker that kept it would hold the port open after the master died (so a new master
    could not listen on it), and the kernel could hand it connections it never answers.
    """
    if _listener is not None:
        _listener.socket.close()


def worker_exited(directory: Path, pid: int) -> None:
    """In the gunicorn master, once a worker has exited: add its counts to the dead workers'
    files and remove its own, and drop its live gauges (prometheus_client's own
    mark_process_dead)."""
    with _files_lock:
        multiprocess.mark_process_dead(pid, str(directory))
        for kind in _ADDED_KINDS:
            own = directory / f"{kind}_{pid}.db"
            if not own.exists():
                continue
            if _written(own):  # else killed as it made the file: nothing counted in it
                try:
                    add_into(directory / f"{kind}_{DEAD}.db", own)
                except Exception:
                    # Never stop the master (gunicorn ends on an error in a hook): the file
                    # stays, and scrapes go on counting it.
                    log.exception("could not fold the metrics file %s", own.name)
                    continue
            own.unlink()


def _written(path: Path) -> bool:
    """Whether a metrics file has its header yet (see WorkerFiles)."""
    try:
        return path.stat().st_size >= _HEADER_BYTES
    except FileNotFoundError:
        return False


def add_into(total: Path, more: Path) -> None:
    """Replace the file ``total`` (made if missing) by one holding, for every key in either
    file, the sum of its values in both.

    The one place that uses a private API: prometheus_client's file format has no public
    reader or writer, so this uses its MmapedDict (prometheus_client.mmap_dict), as its own
    MultiProcessCollector does; tests/unit/test_metrics_server.py fails if that changes. The
    new file is written aside and moved into place, so ``total`` is never half written.
    """
    values: defaultdict[str, float] = defaultdict(float)
    for path in (total, more):
        if path.exists():
            for key, value, _timestamp, _position in MmapedDict.read_all_values_from_file(
                str(path)
            ):
                values[key] += value
    written = total.with_name(total.name + ".partial")  # not *.db: scrapes read only those
    written.unlink(missing_ok=True)
    merged = MmapedDict(str(written))
    try:
        for key, value in values.items():
            merged.write_value(key, value, 0.0)
    finally:
        merged.close()
    os.replace(written, total)
