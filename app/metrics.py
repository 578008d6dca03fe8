"""Prometheus metrics: what the app counts, and the separate port that serves them.

Every metric is defined here; other modules call in with one line
(``metrics.SESSIONS_CREATED.inc()``), so instrumenting code stays a small, visible change.
The list, with what each one means, is in docs/observability.md.

Under gunicorn the counts are kept in ``prometheus_client``'s multiprocess mode: each worker
writes its values to memory-mapped files in ``PROMETHEUS_MULTIPROC_DIR`` (named by
metrics_dir.prepare, on /dev/shm), and the master serves their sum on ``METRICS_PORT``, a port
the public Service does not expose (metrics_server.py, which also folds a dead worker's counts
into one file for all dead workers: never lost, never counted twice).

Label values are bounded by construction: ``route`` is the matched URL rule (or
``unmatched``), never the raw path; methods outside the usual few become ``other``; refusal
reasons and Redis error kinds come from fixed lists. Nothing here ever sees a session id.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import redis
from prometheus_client import Counter, Histogram

from .config import Settings

PREFIX = "messageapp_"

# Redis failures by kind, most specific first (redis-py's classes nest: an authentication
# failure is a ConnectionError, a READONLY reply is a ResponseError).
_ERROR_KINDS: tuple[tuple[type[BaseException], str], ...] = (
    (redis.AuthenticationError, "auth"),
    (redis.BusyLoadingError, "loading"),
    (redis.ConnectionError, "connection"),
    (redis.TimeoutError, "timeout"),
    (redis.ReadOnlyError, "readonly"),
    # Before ResponseError, which CLUSTERDOWN and TRYAGAIN are too: a failover, not a refusal.
    (redis.exceptions.ClusterError, "cluster"),
    (redis.exceptions.TryAgainError, "cluster"),
    (redis.ResponseError, "response"),
)
ERROR_KINDS = tuple(dict.fromkeys((*(kind for _, kind in _ERROR_KINDS), "other")))  # each once
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
# By reason: the rows of refusals.REFUSALS.
MESSAGE_REFUSALS = Counter(
    PREFIX + "message_refusals",
    "Messages or form posts refused (nothing saved), by reason.",
    ["reason"],
)
# The Redis ones are kept by app/redis_client.py, the one way to Redis, by operation name.
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
# The operations the app names in RedisClient.run, whose series every worker makes at 0 when it
# starts (another one's on first use): the CloudWatch agent takes a counter's first sample as
# its baseline, so a series first seen holding errors would never show them.
REDIS_OPERATIONS = (
    "connect", "ping", "role", "read", "save", "write_document", "refresh", "delete",
    "rate_limit", "replication",
)  # fmt: skip
# Why a request was answered 503 because of the session store (app/errors.py says each one's
# page): unreachable (also slow, failing over, loading: trying again soon helps), not_replicated
# (no replica confirmed a save in time), out_of_memory (Redis refuses writes: trying again soon
# does not help), error (anything else, e.g. refused credentials).
UNAVAILABLE_REASONS = ("unreachable", "not_replicated", "out_of_memory", "error")
UNAVAILABLE_RESPONSES = Counter(
    PREFIX + "unavailable_responses",
    "Requests answered 503 because of the session store, by reason.",
    ["reason"],
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
SAVES_WITHOUT_REPLICA = Counter(
    PREFIX + "saves_without_replica",
    "Saves acknowledged (303) although no replica confirmed them, because the primary had none "
    "(after a failover, or while a replica is replaced): a failover now could lose them.",
)
SESSIONS_CREATED = Counter(PREFIX + "sessions_created", "Sessions stored (first message saved).")
SESSIONS_DESTROYED = Counter(
    PREFIX + "sessions_destroyed", "Sessions destroyed by their user (expiry is not counted)."
)

# Children made once, so that every reason shows (as 0) from the start and a 503 never pays
# for labels()'s validation.
_UNAVAILABLE = {reason: UNAVAILABLE_RESPONSES.labels(reason) for reason in UNAVAILABLE_REASONS}


def unavailable(reason: str) -> None:
    """Count one 503; ``reason`` must be one of UNAVAILABLE_REASONS (a fixed list)."""
    _UNAVAILABLE[reason].inc()


def error_kind(exc: BaseException) -> str:
    for cls, kind in _ERROR_KINDS:
        if isinstance(exc, cls):
            return kind
    return "other"


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


def init_app(app: Any, settings: Settings) -> None:
    """Count and time the app's requests (skipped when METRICS_PORT=0, metrics off)."""
    if settings.metrics_port:
        app.wsgi_app = RequestMetrics(app.wsgi_app)
