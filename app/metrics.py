"""Prometheus metrics: what the app counts, and the separate port that serves them.

Every metric is defined here; other modules call in with one line (``metrics.refused("csrf")``,
``metrics.SESSIONS_CREATED.inc()``), so instrumenting code stays a small, visible change.
The list, with what each one means, is in docs/metrics.md.

Under gunicorn the counts are kept in ``prometheus_client``'s multiprocess mode: each worker
writes its values to memory-mapped files in ``PROMETHEUS_MULTIPROC_DIR`` (set up by
gunicorn.conf.py, on /dev/shm), and the master serves their sum on ``METRICS_PORT``, a port
the public Service does not expose. A worker that dies leaves its files, so its counts stay
in the totals (never lost, never counted twice).

Label values are bounded by construction: ``route`` is the matched URL rule (or
``unmatched``), never the raw path; methods outside the usual few become ``other``; refusal
reasons and Redis error kinds come from fixed lists. Nothing here ever sees a session id.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import redis
from gunicorn.util import parse_address
from prometheus_client import CollectorRegistry, Counter, Histogram, multiprocess
from prometheus_client.exposition import start_http_server

log = logging.getLogger(__name__)

T = TypeVar("T")

PREFIX = "messageapp_"

# Why a message (or a form post) was not saved, as decided by the views and error handlers.
REFUSAL_REASONS = (
    "empty",
    "too_long",
    "over_count",
    "session_gone",
    "csrf",
    "invalid_utf8",
    "body_too_large",
    "over_budget",
    "rate_limited",
    "damaged_form",
)
# Redis failures by kind, most specific first (redis-py's classes nest: an authentication
# failure is a ConnectionError, a READONLY reply is a ResponseError).
_ERROR_KINDS: tuple[tuple[type[BaseException], str], ...] = (
    (redis.AuthenticationError, "auth"),
    (redis.BusyLoadingError, "loading"),
    (redis.ConnectionError, "connection"),
    (redis.TimeoutError, "timeout"),
    (redis.ReadOnlyError, "readonly"),
    (redis.ResponseError, "response"),
)
ERROR_KINDS = (*(kind for _, kind in _ERROR_KINDS), "other")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"

# A page view takes ~0.3 ms of CPU and a few ms under load; a Redis outage costs up to ~5 s.
_HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Redis answers in well under a millisecond on a healthy network; retries take up to seconds.
_REDIS_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 1.0, 5.0)

# One histogram, no separate request counter: its _count series is the number of requests by
# route, method and status, and every series written costs each request time (see docs).
HTTP_DURATION = Histogram(
    PREFIX + "http_request_duration_seconds",
    "HTTP requests by matched route, method and status code, and the time from receiving one "
    "to handing its response to gunicorn (_count: requests answered).",
    ["route", "method", "status"],
    buckets=_HTTP_BUCKETS,
)
MESSAGE_SAVES = Counter(PREFIX + "message_saves", "Messages saved.")
MESSAGE_REFUSALS = Counter(
    PREFIX + "message_refusals",
    "Messages or form posts refused (nothing saved), by reason.",
    ["reason"],
)
REDIS_DURATION = Histogram(
    PREFIX + "redis_call_duration_seconds",
    "Duration of the app's calls to Redis, retries included, by operation (reads answered "
    "by the read cache are not calls: see the read_cache counters).",
    ["operation"],
    buckets=_REDIS_BUCKETS,
)
REDIS_ERRORS = Counter(
    PREFIX + "redis_errors",
    "Redis operations that failed after their retries, by operation and kind of error.",
    ["operation", "kind"],
)
FAIL_FAST_RESPONSES = Counter(
    PREFIX + "fail_fast_responses",
    "Requests refused at once (503) because Redis was already known to be away.",
)
READ_CACHE_HITS = Counter(PREFIX + "read_cache_hits", "Session reads answered by the cache.")
READ_CACHE_MISSES = Counter(PREFIX + "read_cache_misses", "Session reads that asked Redis.")
READ_CACHE_INVALIDATIONS = Counter(
    PREFIX + "read_cache_invalidations",
    "Keys Redis told this process to forget (a flush of the whole cache counts once).",
)
SESSIONS_CREATED = Counter(PREFIX + "sessions_created", "Sessions stored (first message saved).")
SESSIONS_DESTROYED = Counter(
    PREFIX + "sessions_destroyed", "Sessions destroyed by their user (expiry is not counted)."
)

# Children made once, so that every reason shows (as 0) from the start and a hot path never
# pays for labels()'s validation.
_REFUSALS = {reason: MESSAGE_REFUSALS.labels(reason) for reason in REFUSAL_REASONS}


def refused(reason: str) -> None:
    """Count one refusal; ``reason`` must be one of REFUSAL_REASONS (a fixed list)."""
    _REFUSALS[reason].inc()


def error_kind(exc: BaseException) -> str:
    for cls, kind in _ERROR_KINDS:
        if isinstance(exc, cls):
            return kind
    return "other"


# The store's reads of a session (its one hash), timed only when they reach Redis (time_read),
# not on cache hits; their failures are counted under the store operation that read.
_READS = ("load", "messages")
_READ_DURATION = REDIS_DURATION.labels("read")


def timed_redis(operation: Callable[..., T]) -> Callable[..., T]:
    """Wrap a store operation: its failures by kind and (writes only) its duration, by name."""
    name = operation.__name__
    duration = REDIS_DURATION.labels(name)
    errors = {kind: REDIS_ERRORS.labels(name, kind) for kind in ERROR_KINDS}

    def counted(*args: Any, **kwargs: Any) -> T:
        try:
            return operation(*args, **kwargs)
        except redis.RedisError as exc:
            errors[error_kind(exc)].inc()
            raise

    def timed(*args: Any, **kwargs: Any) -> T:
        started = time.perf_counter()
        try:
            return operation(*args, **kwargs)
        except redis.RedisError as exc:
            errors[error_kind(exc)].inc()
            raise
        finally:
            duration.observe(time.perf_counter() - started)

    return counted if name in _READS else timed


def time_read(fetch: Callable[[str], T], key: str) -> T:
    """A read of a session that goes to Redis, timed."""
    started = time.perf_counter()
    try:
        return fetch(key)
    finally:
        _READ_DURATION.observe(time.perf_counter() - started)


class RequestMetrics:
    """WSGI middleware counting and timing every request the Flask app answers.

    Middleware rather than Flask hooks: it times the whole request, opening and saving the
    session included, and adds no hook to the app's request path. The route is read while
    Flask's request is still current (in start_response, which Flask calls before it pops
    the request context).
    """

    def __init__(self, wsgi_app: Callable[..., Iterable[bytes]]) -> None:
        self.wsgi_app = wsgi_app
        # (route, method, status) -> its histogram: labels() costs more than a dict lookup.
        self._children: dict[tuple[str, str, str], Any] = {}

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        started = time.perf_counter()
        answered: list[tuple[str, str]] = []

        def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            request = environ.get("werkzeug.request")
            rule = request.url_rule if request is not None else None
            answered.append((rule.rule if rule is not None else UNMATCHED, status[:3]))
            return start_response(status, headers, exc_info)

        try:
            return self.wsgi_app(environ, capture)
        finally:
            route, status = answered[-1] if answered else (UNMATCHED, "500")
            method = environ.get("REQUEST_METHOD", "")
            key = (route, method if method in _METHODS else "other", status)
            child = self._children.get(key)
            if child is None:
                child = self._children[key] = HTTP_DURATION.labels(*key)
            child.observe(time.perf_counter() - started)


def init_app(app: Any) -> None:
    """Count and time the app's requests (skipped when METRICS_PORT=0, metrics off)."""
    if app.extensions["settings"].metrics_port:
        app.wsgi_app = RequestMetrics(app.wsgi_app)


# gunicorn hooks (gunicorn.conf.py) ---------------------------------------------------------


def serve(bind: list[str], port: int) -> None:
    """In the gunicorn master: serve the workers' summed metrics on ``port``.

    Listens on the host of gunicorn's first bind address (0.0.0.0 in the container, loopback
    locally and in tests). A port already taken is logged, not fatal: users are still served.
    """
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    address = parse_address(bind[0]) if bind else ("127.0.0.1", port)
    host = address[0] if isinstance(address, tuple) else "127.0.0.1"  # a unix socket: local
    try:
        start_http_server(port, addr=host.strip("[]"), registry=registry)
    except OSError as exc:
        log.error("metrics are not served: cannot listen on %s:%s: %s", host, port, exc)
        return
    log.info("metrics served on http://%s:%s/metrics", host, port)


def worker_exited(pid: int) -> None:
    """In the gunicorn master: drop a dead worker's live gauges (its counts stay)."""
    multiprocess.mark_process_dead(pid)
