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

Called from gunicorn.conf.py's hooks: ``serve`` (when_ready), ``close_in_worker`` (post_fork),
``worker_exited`` (child_exit).
"""

from __future__ import annotations

import logging
import os
import threading
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, multiprocess
from prometheus_client.exposition import start_http_server
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

# Held while a scrape reads the files and while a dead worker's are folded, so that a scrape
# sees a dead worker's counts exactly once: in its own files, or in the dead workers'.
_files_lock = threading.Lock()
# The master's metrics listener, which its workers close (they are forked from the master).
_listener: WSGIServer | None = None


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
        _listener, _ = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        log.error("metrics are not served: cannot listen on %s:%s: %s", host, port, exc)
        return
    log.info("metrics served on http://%s:%s/metrics", host, port)


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
