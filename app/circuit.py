"""The circuit breaker, one per worker (on a cluster, one per node: app/redis_client.py): while
Redis is away, requests fail at once instead of waiting.

When a call to Redis fails for lack of Redis (a dropped or refused connection, a timeout, no
cluster node reachable), the circuit opens: for the cool-down every call is refused at once,
so a worker answers its 503s in milliseconds and the requests queued behind (the probes
among them) never wait on a server that does not answer. After the cool-down one call is let
through as a trial: if it succeeds the circuit closes, if it fails it opens for another
cool-down. So a frozen Redis costs each worker one timed-out call per cool-down, not one per
request, and the first request a cool-down after Redis is back succeeds.

Hand-written: redis-py offers a circuit breaker only for its multi-database client, and
pybreaker (the well-kept general one) counts failures before opening and wraps calls in its
own exceptions; here one failure is enough (it already spent redis-py's retries), and the
callers need redis-py's own errors to show their 503.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

# Long enough that a frozen server costs a worker at most one timed-out call (0.5 s) per
# second and a half; short enough that pages are back within two seconds of Redis.
COOL_DOWN_SECONDS = 1.0


class Circuit:
    def __init__(
        self, cool_down: float = COOL_DOWN_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._cool_down = cool_down
        self._clock = clock
        self._lock = threading.Lock()
        self._open_until: float | None = None  # None: closed
        self._trial = False  # a call is on trial now (at most one at a time)

    @property
    def is_open(self) -> bool:
        """Whether Redis is known to be away (the last call failed, and no trial succeeded)."""
        return self._open_until is not None

    def allow(self) -> bool:
        """Whether a call may go to Redis now; the first one after a cool-down is the trial."""
        if self._open_until is None:
            return True
        with self._lock:
            if self._open_until is None:
                return True
            if self._trial or self._clock() < self._open_until:
                return False
            self._trial = True
            return True

    def succeeded(self) -> None:
        if self._open_until is not None:
            with self._lock:
                self._open_until = None
                self._trial = False

    def failed(self) -> None:
        with self._lock:
            self._open_until = self._clock() + self._cool_down
            self._trial = False
