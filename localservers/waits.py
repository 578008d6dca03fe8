"""Readiness waits: poll a condition instead of sleeping a guessed time, always bounded."""

from __future__ import annotations

import http.client
import time
from collections.abc import Callable

from localservers import HOST


def wait_until(
    check: Callable[[], bool],
    timeout: float = 15.0,
    what: str = "condition",
    interval: float = 0.05,
) -> None:
    """Poll ``check`` until it holds; raise ``TimeoutError`` naming ``what`` after ``timeout``
    seconds (a failed test, or a failed benchmark step)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def sleep_until(moment: float) -> None:
    """Sleep until ``moment`` (time.monotonic()): a scripted run's events keep their schedule
    however long the work between them took."""
    remaining = moment - time.monotonic()
    if remaining > 0:
        time.sleep(remaining)


def answers_200(port: int, path: str = "/healthz", timeout: float = 2.0) -> bool:
    """Whether ``GET path`` on loopback ``port`` answers 200 now (False while nothing listens).

    http.client, not requests: the benchmark's environment need not have requests."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path)
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()
