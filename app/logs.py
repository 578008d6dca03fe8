"""One JSON object per log line, each tagged with the request id, and at most one line a second
from each line of code.

Container platforms (CloudWatch, Fluent Bit, Loki) parse JSON lines without custom parsers,
and the request id (taken from the load balancer's ``X-Request-ID`` when it is well formed,
made up otherwise, and echoed in the response) ties a user's report to the app's and
gunicorn's lines. During an outage every request fails the same way; ``RepeatLimit`` keeps the
app's log to a line a second per kind, with a count of the rest (gunicorn's access log still
has a line per request).
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from flask import g, has_request_context, request
from gunicorn.glogging import Logger as GunicornBaseLogger

REQUEST_ID_HEADER = "X-Request-ID"
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# LogRecord attributes that are not worth repeating in every line.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if has_request_context() and "request_id" in g:
            line["request_id"] = g.request_id
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


@dataclass
class _Second:
    """One kind's current second: when it ends, and the lines held back in it."""

    ends: float
    held: int = 0
    last: logging.LogRecord | None = None


class RepeatLimit(logging.Filter):
    """At most one line a second of each kind (a line of code at a level), never losing one.

    The first line of a kind is written at once. Lines of that kind within the next second are
    held back and counted; when the second is over, the last of them is written with
    ``repeats``: how many more like it were not written. Then the next second starts, so an
    outage writes one line per kind per second, and every line is either written or counted:
    in a 10 s Redis outage one pod wrote 15,930 lines (3.2 MB), two per failed request.

    Hand-written: log-rate-limit (PyPI) appends its count to the message text, keeps its state
    without a lock, and reports a burst's count only with the next line of that kind, so the
    end of an outage would go uncounted. The kinds are lines of code, so they are few.
    """

    def __init__(self, handler: logging.Handler, interval: float = 1.0) -> None:
        super().__init__()
        self._handler = handler
        self._interval = interval
        self._lock = threading.Lock()
        self._seconds: dict[tuple[str, int, int], _Second] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_released", False):
            return True
        kind = (record.pathname, record.lineno, record.levelno)
        now = time.monotonic()
        with self._lock:
            second = self._seconds.get(kind)
            if second is None or now >= second.ends:
                # A new second (the timer below may not have run yet: its lines count here).
                self._seconds[kind] = _Second(now + self._interval)
                if second is not None and second.held:
                    record.repeats = second.held
                return True
            if second.last is None:
                release = threading.Timer(second.ends - now, self._release, (kind, second))
                release.daemon = True
                release.start()
            second.held += 1
            second.last = record
        if has_request_context() and "request_id" in g:
            record.request_id = g.request_id  # written later, outside the request
        return False

    def _release(self, kind: tuple[str, int, int], second: _Second) -> None:
        with self._lock:
            if self._seconds.get(kind) is not second or second.last is None:
                return  # a line of this kind has already reported the count
            record = second.last
            record._released = True
            if second.held > 1:
                record.repeats = second.held - 1
            self._seconds[kind] = _Second(time.monotonic() + self._interval)
        self._handler.handle(record)


class _StdoutJson(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler ``configure`` installs: a class of its own, so that configuring again
    replaces it and leaves any other handler (a test's log capture) in place."""


def configure(level: str) -> None:
    """Send the app's logs to stdout as JSON (gunicorn's own go through GunicornLogger), at most
    one line a second of each kind (``RepeatLimit``)."""
    handler = _StdoutJson(sys.stdout)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RepeatLimit(handler))
    root = logging.getLogger()
    root.handlers[:] = [h for h in root.handlers if not isinstance(h, _StdoutJson)] + [handler]
    root.setLevel(level)
    # Whatever LOG_LEVEL says: botocore's DEBUG lines hold what a signed ElastiCache token is
    # made of (the canonical request, the session token, the signature), i.e. a key to the
    # cache for its 15 minutes, and its INFO lines name the credentials' source on every new
    # connection pool. Its failures still reach the log, as the app's own errors.
    logging.getLogger("botocore").setLevel(logging.WARNING)
    # Its warning with a traceback for every failed fetch of the pod's credentials, too: the
    # app says so itself, in one line (app/credentials.py, app/errors.py).
    logging.getLogger("botocore.credentials").setLevel(logging.ERROR)


def request_id_from(header_value: str | None) -> str:
    if header_value and _VALID_REQUEST_ID.fullmatch(header_value):
        return header_value
    return os.urandom(16).hex()  # as unique as a uuid4, at a fraction of the cost


class GunicornLogger(GunicornBaseLogger):
    """gunicorn's logger with JSON lines, for its error log and its access log."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for logger in (self.error_log, self.access_log):
            for handler in logger.handlers:
                handler.setFormatter(JsonFormatter())

    def access(self, resp: Any, req: Any, environ: dict, request_time: Any) -> None:
        if not (self.cfg.accesslog or self.cfg.logconfig or self.cfg.syslog):
            return
        # gunicorn's own error path (a request its parser refused) passes a bare Response
        # with `.status` ("400 Bad Request") but no `.status_code`, after logging a warning
        # that names the cause: that warning is the request's one line.
        status = getattr(resp, "status_code", None)
        if status is None:
            return
        headers = dict(resp.headers)
        self.access_log.info(
            "%s %s %s",
            environ.get("REQUEST_METHOD"),
            environ.get("PATH_INFO"),
            status,
            extra={
                "method": environ.get("REQUEST_METHOD"),
                "path": environ.get("PATH_INFO"),
                "status": status,
                "duration_ms": round(request_time.total_seconds() * 1000, 2),
                "bytes": getattr(resp, "sent", None),
                "remote_addr": environ.get("REMOTE_ADDR"),
                "request_id": headers.get(REQUEST_ID_HEADER),
                "replica": headers.get("X-Served-By"),
            },
        )


def current_request_id() -> str:
    """The request id for this request, created on first use."""
    if "request_id" not in g:
        g.request_id = request_id_from(request.headers.get(REQUEST_ID_HEADER))
    return g.request_id
