"""``create_app``, the factory gunicorn serves (``app:create_app()``), in the style of Flask's
own tutorial; tests pass settings, and a client factory (fakeredis), instead of the environment.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import redis
from flask import Flask

from . import credentials, csrf, errors, health, hooks, logs, metrics, views
from .config import Settings, Switch
from .connection import MadeOnFirstUse, connect, worker_cluster_mode
from .messages import Messages
from .ratelimit import RateLimits
from .read_cache import ReadCache
from .redis_client import RedisClient
from .replication import NodeReplication, ReplicaWait
from .request_class import Request
from .sessions import RedisSessions
from .store import Limits, SessionStore

logger = logging.getLogger(__name__)


def create_app(
    settings: Settings | None = None, connect_redis: Callable[..., redis.Redis] | None = None
) -> Flask:
    """The app; ``connect_redis`` (tests: fakeredis) makes every Redis client instead of
    connecting to REDIS_HOST, given the options that would be passed to ``redis.Redis``."""
    settings = settings or Settings.from_env()
    logs.configure(settings.log_level)

    # No static folder: the page's only stylesheet is inline (one request per page).
    app = Flask(__name__, static_folder=None)
    app.request_class = Request  # reads the cookies without walking every header
    app.config.update(
        SECRET_KEY=settings.secret_key,
        # Flask 3.1's key rotation; csrf.py gives the same keys to the CSRF signers.
        SECRET_KEY_FALLBACKS=list(settings.secret_key_fallbacks),
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
    app.extensions["redis"] = redis_client = _connect(settings, connect_redis)
    store = SessionStore(
        redis_client,
        Limits(
            messages=settings.messages_max_per_session,
            bytes=settings.session_max_bytes,
            ttl_seconds=settings.session_lifetime_seconds,
        ),
        _replica_wait(settings, redis_client),
    )
    app.extensions["messages"] = Messages(store, RateLimits(settings, redis_client))
    credentials.init_app(app, settings, redis_client.reset)
    csrf_secrets = csrf.CsrfSecrets(
        settings.secret_key, settings.secret_key_fallbacks, secure=settings.session_cookie_secure
    )
    app.session_interface = RedisSessions(store, csrf_secrets)

    hooks.register(app, settings, csrf_secrets)
    # Before CSRFProtect's hook, whose check parses the form: the views' raw-form check
    # (views.check_raw_form) must see the body first.
    app.register_blueprint(views.bp)
    csrf.init_app(app)

    app.register_blueprint(health.bp)
    errors.register(app)
    metrics.init_app(app, settings)
    return app


def _connect(settings: Settings, connect_redis: Callable[..., redis.Redis] | None) -> RedisClient:
    cache = ReadCache(settings.read_cache_max_bytes) if settings.redis_client_cache else None
    if connect_redis is not None:
        return RedisClient(connect_redis(), connect_redis, cache=cache)
    # gunicorn.conf.py checked the configuration and the credentials once, in the master, to
    # refuse a bad one in one line. A worker never refuses (a worker that fails to boot stops
    # gunicorn, the whole pod): it only asks, with REDIS_CLUSTER=auto, whether the server is a
    # cluster (connection.worker_cluster_mode says why).
    cluster = worker_cluster_mode(settings)
    if cluster:
        logger.info("Redis is a cluster: the cluster client, saves do not wait for replicas")
    make = functools.partial(connect, settings)
    pooled = MadeOnFirstUse(functools.partial(make, cluster=True)) if cluster else make()
    return RedisClient(pooled, make, cache=cache)


def _replica_wait(settings: Settings, redis_client: RedisClient) -> ReplicaWait:
    """The replication policy (app/replication.py); off on a cluster, where redis-py's cluster
    client cannot send WAIT down the connection that made the write."""
    mode = Switch.OFF if redis_client.cluster else settings.redis_wait_replicas

    def ask() -> NodeReplication:
        info = redis_client.on_primary("replication", "INFO", "replication")
        return NodeReplication.from_info(info)

    replicas = ReplicaWait(mode, settings.redis_wait_timeout_ms, ask)
    redis_client.listen(replicas)
    return replicas
