"""``create_app``, the factory gunicorn serves (``app:create_app()``), in the style of Flask's
own tutorial; tests pass settings and a client (fakeredis) instead of the environment.
"""

from __future__ import annotations

import logging

import redis
from flask import Flask
from redis.backoff import NoBackoff
from redis.retry import Retry

from . import csrf, errors, health, hooks, logs, metrics, validation, views
from .config import Settings, Switch
from .connection import check_server, connect
from .ratelimit import RateLimits
from .reads import DirectReads, Reads, TrackedReads
from .sessions import MessageSessionInterface
from .store import MessageStore

logger = logging.getLogger(__name__)


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
        # A Redis failure must reach our handlers, never propagate as a traceback.
        PROPAGATE_EXCEPTIONS=False,
    )
    app.extensions["settings"] = settings
    app.extensions["message_store"] = store = _make_store(settings, redis_client)
    app.extensions["rate_limits"] = RateLimits(settings, store)
    csrf_secrets = csrf.CsrfSecrets(settings.secret_key)
    app.session_interface = MessageSessionInterface(
        app, store, settings.session_lifetime_seconds, csrf_secrets
    )

    hooks.register(app, settings)  # before CSRFProtect's hook, whose check parses the form
    csrf.init_app(app, csrf_secrets)

    app.register_blueprint(views.bp)
    app.register_blueprint(health.bp)
    errors.register(app)
    validation.register(app)
    metrics.init_app(app)
    return app


def _make_store(settings: Settings, client: redis.Redis | None) -> MessageStore:
    waiting = {
        "wait_replicas": settings.redis_wait_replicas,
        "wait_timeout_ms": settings.redis_wait_timeout_ms,
    }
    if client is not None:
        return MessageStore(client, DirectReads(client), **waiting)
    # Each worker asks for itself (gunicorn.conf.py asked once in the master, to refuse a bad
    # configuration in one line): with REDIS_CLUSTER=auto, a master that started during an
    # outage took the server for one primary, and a worker booted after Redis returned should
    # not inherit that guess.
    cluster = check_server(settings)
    client = connect(settings, cluster)
    if cluster:
        # No WAIT on a cluster (see MessageStore._run_save), and no read cache (see
        # reads.TrackedReads): one line in the log says so.
        waiting["wait_replicas"] = Switch.OFF
        logger.info("Redis is a cluster: the cluster client, no read cache, saves do not wait")
        reads: Reads = DirectReads(client, cluster=True)
    elif settings.redis_client_cache:
        reads = TrackedReads(settings)
    else:
        reads = DirectReads(client)
    # One PING, quickly, no retries: for /readyz, which reports and does not wait, and for
    # checking whether Redis is back during an outage (see store._guarded).
    probe = connect(
        settings,
        cluster,
        retry=Retry(NoBackoff(), 0),
        socket_connect_timeout=0.5,
        socket_timeout=0.5,
    )
    return MessageStore(client, reads, probe, **waiting)
