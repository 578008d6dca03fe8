"""The message app: Flask sessions in Redis, shared by every replica.

``create_app`` is the factory gunicorn serves (``app:create_app()``), in the style of
Flask's own tutorial; tests pass settings and a client (fakeredis) instead of the
environment.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from flask import Flask, request, session
from redis.backoff import NoBackoff
from redis.retry import Retry

from . import csrf, errors, health, logs, views
from .config import Settings
from .connection import check_server, connect
from .ratelimit import RateLimits
from .reads import DirectReads, Reads, TrackedReads
from .sessions import MessageSessionInterface, UnavailableSession
from .store import MessageStore

logger = logging.getLogger(__name__)

# Set on every response. (No Vary: Cookie: with no-store, no cache keeps a page at all.)
STATIC_HEADERS = [
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "same-origin"),
    # Pages carry a CSRF token and the user's messages: never cache them.
    ("Cache-Control", "no-store"),
]


def create_app(settings: Settings | None = None, redis_client: redis.Redis | None = None) -> Flask:
    settings = settings or Settings.from_env()
    logs.configure(settings.log_level)

    # No static folder: the page's only stylesheet is inline (one request per page).
    app = Flask(__name__, static_folder=None)
    app.config.update(
        SECRET_KEY=settings.secret_key,
        PERMANENT_SESSION_LIFETIME=settings.session_lifetime_seconds,
        SESSION_COOKIE_NAME="session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.session_cookie_secure,
        MAX_CONTENT_LENGTH=settings.max_content_length,
        # The CSRF token is checked against the secret in the signed `csrf` cookie; an hour
        # is flask-wtf's default lifetime for a token in an open page.
        WTF_CSRF_TIME_LIMIT=3600,
        # A Redis failure must reach our handlers, never propagate as a traceback.
        PROPAGATE_EXCEPTIONS=False,
    )
    app.extensions["settings"] = settings
    app.extensions["message_store"] = store = _make_store(settings, redis_client)
    app.extensions["rate_limits"] = RateLimits(settings, store)
    app.session_interface = MessageSessionInterface(app, store, settings.session_lifetime_seconds)

    # One hook each way (every hook costs a page view a few microseconds); registered
    # before CSRFProtect's, whose check parses the form.
    app.before_request(_before_request)
    csrf.init_app(app)
    constant_headers = [
        ("X-Served-By", settings.replica_name),
        ("Content-Security-Policy", _content_security_policy(app)),
        *STATIC_HEADERS,
    ]
    app.after_request(_response_headers(constant_headers))

    app.register_blueprint(views.bp)
    app.register_blueprint(health.bp)
    errors.register(app)
    return app


def _make_store(settings: Settings, client: redis.Redis | None) -> MessageStore:
    waiting = {
        "wait_replicas": settings.redis_wait_replicas,
        "wait_timeout_ms": settings.redis_wait_timeout_ms,
    }
    if client is not None:
        return MessageStore(client, DirectReads(client), **waiting)
    cluster = check_server(settings)
    client = connect(settings, cluster)
    if cluster:
        # No WAIT on a cluster (see MessageStore._run_save), and no read cache (see
        # reads.TrackedReads): one line in the log says so.
        waiting["wait_replicas"] = "off"
        logger.info("Redis is a cluster: the cluster client, no read cache, saves do not wait")
        reads: Reads = DirectReads(client, cluster=True)
    elif settings.redis_client_cache:
        reads = TrackedReads(settings)
    else:
        reads = DirectReads(client)
    # One PING, quickly, no retries: for /readyz, which reports and does not wait, and for
    # checking whether Redis is back during an outage (see store._fail_fast).
    probe = connect(
        settings,
        cluster,
        retry=Retry(NoBackoff(), 0),
        socket_connect_timeout=0.5,
        socket_timeout=0.5,
    )
    return MessageStore(client, reads, probe, **waiting)


def _before_request() -> Any:
    logs.current_request_id()  # first, so that every log line of the request carries it
    current_request = request._get_current_object()
    current = session._get_current_object()
    if isinstance(current, UnavailableSession):
        return errors.store_unavailable(redis.ConnectionError("could not open the session"))
    if current_request.method == "POST":
        refusal = errors.reject_invalid_utf8(current_request)
        if refusal is not None:
            return refusal
    csrf.reuse_token(current)
    return None


def _content_security_policy(app: Flask) -> str:
    """Nothing but this app's own forms and its one inline stylesheet, named by its hash."""
    source = (Path(app.root_path) / "templates" / "base.html").read_text()
    style = re.search(r"<style>(.*?)</style>", source, re.S)
    if style is None:
        raise RuntimeError("app/templates/base.html has no <style> block to allow")
    digest = base64.b64encode(hashlib.sha256(style.group(1).encode()).digest()).decode()
    return (
        f"default-src 'none'; style-src 'sha256-{digest}'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    )


def _response_headers(constant: list[tuple[str, str]]) -> Callable[[Any], Any]:
    """The after-request hook, with the headers that never change built once."""

    def add_headers(response: Any) -> Any:
        csrf.remember_token()
        headers = response.headers
        headers["X-Request-ID"] = logs.current_request_id()
        headers.extend(constant)
        return response

    return add_headers
