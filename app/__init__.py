"""The message app: Flask sessions in Redis, shared by every replica.

``create_app`` is the factory gunicorn serves (``app:create_app()``), in the style of
Flask's own tutorial; tests pass settings and a client (fakeredis) instead of the
environment.
"""

from __future__ import annotations

from typing import Any

import redis
from flask import Flask, current_app, session
from flask_wtf.csrf import CSRFProtect
from redis.backoff import NoBackoff
from redis.retry import Retry

from . import errors, health, logs, views
from .config import Settings
from .sessions import MessageSessionInterface, UnavailableSession
from .store import DirectReads, MessageStore, TrackedReads, connect

csrf = CSRFProtect()


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

    # Order matters: the request id first, for every log line; then the two refusals that
    # must come before CSRFProtect's own check, which parses the form.
    app.before_request(_assign_request_id)
    app.before_request(_refuse_when_store_unavailable)
    app.before_request(errors.reject_invalid_utf8)
    csrf.init_app(app)
    app.after_request(_add_response_headers)

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


def _refuse_when_store_unavailable() -> Any:
    if isinstance(session._get_current_object(), UnavailableSession):
        return errors.store_unavailable(redis.ConnectionError("could not open the session"))
    return None


def _assign_request_id() -> None:
    logs.current_request_id()


def _add_response_headers(response: Any) -> Any:
    response.headers["X-Request-ID"] = logs.current_request_id()
    response.headers["X-Served-By"] = current_app.extensions["settings"].replica_name
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    response.headers.setdefault(
        "Content-Security-Policy",
        "default-src 'none'; style-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'",
    )
    if response.mimetype == "text/html":
        # Pages carry a CSRF token and the user's messages: never cache them.
        response.headers["Cache-Control"] = "no-store"
    return response
