"""The message app: Flask sessions in Redis, shared by every replica.

``create_app`` is the factory gunicorn serves (``app:create_app()``), in the style of
Flask's own tutorial; tests pass settings and a client (fakeredis) instead of the
environment.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis
from flask import Flask, session
from redis.backoff import NoBackoff
from redis.retry import Retry

from . import csrf, errors, health, logs, views
from .config import Settings
from .sessions import MessageSessionInterface, UnavailableSession
from .store import DirectReads, MessageStore, TrackedReads, connect

# Set on every response. Every page depends on the cookies, hence Vary: Cookie.
STATIC_HEADERS = [
    ("Vary", "Cookie"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "same-origin"),
    (
        "Content-Security-Policy",
        "default-src 'none'; style-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'",
    ),
]


def create_app(settings: Settings | None = None, redis_client: redis.Redis | None = None) -> Flask:
    settings = settings or Settings.from_env()
    logs.configure(settings.log_level)

    app = Flask(__name__)
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
    app.session_interface = MessageSessionInterface(app, store, settings.session_lifetime_seconds)

    # One hook each way (every hook costs a page view a few microseconds); registered
    # before CSRFProtect's, whose check parses the form.
    app.before_request(_before_request)
    csrf.init_app(app)
    app.after_request(_response_headers([("X-Served-By", settings.replica_name), *STATIC_HEADERS]))

    app.register_blueprint(views.bp)
    app.register_blueprint(health.bp)
    errors.register(app)
    return app


def _make_store(settings: Settings, client: redis.Redis | None) -> MessageStore:
    if client is not None:
        return MessageStore(client, DirectReads(client))
    client = connect(settings)
    reads = TrackedReads(settings) if settings.redis_client_cache else DirectReads(client)
    # /readyz asks once, quickly: it reports, it does not wait for Redis to come back.
    probe = connect(
        settings, retry=Retry(NoBackoff(), 0), socket_connect_timeout=0.5, socket_timeout=0.5
    )
    return MessageStore(client, reads, probe)


def _before_request() -> Any:
    logs.current_request_id()  # first, so that every log line of the request carries it
    current = session._get_current_object()
    if isinstance(current, UnavailableSession):
        return errors.store_unavailable(redis.ConnectionError("could not open the session"))
    refusal = errors.reject_invalid_utf8()
    if refusal is not None:
        return refusal
    csrf.reuse_token(current)
    return None


def _response_headers(constant: list[tuple[str, str]]) -> Callable[[Any], Any]:
    """The after-request hook, with the headers that never change built once."""

    def add_headers(response: Any) -> Any:
        csrf.remember_token()
        headers = response.headers
        headers["X-Request-ID"] = logs.current_request_id()
        headers.extend(constant)
        # Pages carry a CSRF token and the user's messages: never cache them. Static files
        # keep the validators Flask gives them.
        headers.setdefault("Cache-Control", "no-store")
        return response

    return add_headers
