"""The directory of the workers' metrics files (prometheus_client's multiprocess mode).

Each gunicorn worker writes its counts to memory-mapped files in ``PROMETHEUS_MULTIPROC_DIR``
and the master serves their sum (metrics.py). prometheus_client reads that variable once, when
it is first imported, so gunicorn.conf.py calls ``prepare`` before anything imports it; this
module imports nothing that does.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from .config import Settings

SHM = Path("/dev/shm")  # noqa: S108 - a fixed system path, not a temp file name

_prepared: Path | None = None
_made: Path | None = None


def prepare(settings: Settings) -> Path:
    """Name this process's directory in PROMETHEUS_MULTIPROC_DIR, for it and its workers.

    The one the setting names (e.g. an emptyDir), emptied so that a restart never adds an old
    run's counts; else a new one in memory (/dev/shm: every request writes to these files),
    which ``remove`` deletes at exit. Decided once per process: gunicorn reads gunicorn.conf.py
    again on SIGHUP, and the workers it keeps go on writing where they were.
    """
    global _prepared, _made
    if _prepared is None:
        if settings.metrics_dir is not None:
            _prepared = settings.metrics_dir
            _prepared.mkdir(parents=True, exist_ok=True)
            for stale in _prepared.glob("*.db"):
                stale.unlink()
        else:
            parent = SHM if SHM.is_dir() else None
            _prepared = _made = Path(tempfile.mkdtemp(prefix="gunicorn-metrics-", dir=parent))
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(_prepared)
    return _prepared


def remove() -> None:
    """At the master's exit: delete the directory ``prepare`` made (one named by the setting
    stays, emptied at the next start)."""
    if _made is not None:
        shutil.rmtree(_made, ignore_errors=True)
