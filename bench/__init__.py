"""Benchmark harness: `python -m bench` (see bench/__main__.py for the options).

It starts its own Valkey and gunicorn processes on 127.0.0.1 and drives them with wrk, so the
numbers compare the app, a bare-Flask ceiling and a stock flask-session anchor on one machine in
one run, and the app on one Valkey with the app on a local Valkey cluster. The servers come from
the repository's ``localservers`` package, the same launchers the tests use.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable


def progress_log(name: str) -> Callable[[str], None]:
    """How a benchmark says what it is doing: "[NAME HH:MM:SS] message" lines on stderr, so that
    stdout holds the report alone."""

    def log(message: str) -> None:
        print(f"[{name} {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    return log
