"""Settings, read once from the environment.

The environment is the only source of configuration so that the same image runs locally,
in CI and on EKS, where a ConfigMap and a Secret supply these variables. Every value is
checked here, at start-up, so a typo stops the process with one line that names the
variable instead of surfacing later as a confusing runtime error.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass

from flask import current_app
from limits import parse_many

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class ConfigError(ValueError):
    """A variable is missing or malformed; the message names it and what is allowed."""


@dataclass(frozen=True)
class Settings:
    """Everything the app reads from its environment, validated."""

    redis_host: str | None
    redis_port: int
    redis_tls: bool
    redis_auth_token: str | None
    redis_db: int
    redis_client_cache: bool
    secret_key: str
    session_lifetime_seconds: int
    session_cookie_secure: bool
    message_max_length: int
    messages_max_per_session: int
    log_level: str
    replica_name: str
    metrics_port: int = 9090
    # Defaults here are the production defaults; from_env documents each one.
    redis_wait_replicas: str = "auto"
    redis_wait_timeout_ms: int = 200
    session_max_bytes: int = 262_144
    rate_limit_saves: str = "30/minute"
    rate_limit_new_sessions: str = "10/minute"
    forwarded_allow_ips: tuple[str, ...] = ("127.0.0.1", "::1")
    redis_cluster: str = "auto"  # "auto", "on" or "off" (see connection.cluster_mode)
    redis_username: str | None = None
    redis_auth: str = "token"  # "token" or "iam" (see credentials.py)
    redis_iam_cache_name: str | None = None
    redis_iam_serverless: bool = False
    aws_region: str | None = None
    secret_key_fallbacks: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_auth(self)

    @property
    def max_content_length(self) -> int:
        """The largest request body worth reading.

        Derived rather than configured: a maximal message percent-encodes to at most
        12 bytes per character (4 UTF-8 bytes, each as %XX), plus room for the token.
        """
        return self.message_max_length * 12 + 4096

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        redis_host = _text(env, "REDIS_HOST")
        secret_key = _text(env, "SECRET_KEY")
        if redis_host is None:
            raise ConfigError(
                "REDIS_HOST is not set: set it to the Redis/Valkey host (the ConfigMap does this "
                "on Kubernetes), or run `python -m app`, which starts an embedded Valkey"
            )
        if secret_key is None:
            raise ConfigError(
                "SECRET_KEY is not set: every replica must share one random secret "
                '(e.g. python -c "import secrets; print(secrets.token_hex(32))")'
            )
        if len(secret_key) < 16:
            raise ConfigError("SECRET_KEY is too short: use at least 16 characters (32+ random)")
        return cls(
            redis_host=redis_host,
            redis_port=_integer(env, "REDIS_PORT", 6379, 1, 65535),
            redis_tls=_boolean(env, "REDIS_TLS", False),
            redis_auth_token=_text(env, "REDIS_AUTH_TOKEN"),
            redis_db=_integer(env, "REDIS_DB", 0, 0, 15),
            redis_client_cache=_boolean(env, "REDIS_CLIENT_CACHE", True),
            secret_key=secret_key,
            session_lifetime_seconds=_integer(env, "SESSION_LIFETIME_SECONDS", 1800, 60, 2_592_000),
            session_cookie_secure=_boolean(env, "SESSION_COOKIE_SECURE", False),
            message_max_length=_integer(env, "MESSAGE_MAX_LENGTH", 2000, 1, 100_000),
            messages_max_per_session=_integer(env, "MESSAGES_MAX_PER_SESSION", 500, 1, 1_000_000),
            log_level=_choice(env, "LOG_LEVEL", "INFO", _LOG_LEVELS),
            replica_name=_text(env, "REPLICA_NAME") or socket.gethostname(),
            metrics_port=_integer(env, "METRICS_PORT", 9090, 0, 65535),
            # auto: wait when the primary has replicas at the first save (see store.py).
            redis_wait_replicas=_choice(
                env, "REDIS_WAIT_REPLICAS", "auto", ("AUTO", "ON", "OFF")
            ).lower(),
            # Below the 0.5 s socket timeout, so a slow replica costs a 503, not a retry.
            redis_wait_timeout_ms=_integer(env, "REDIS_WAIT_TIMEOUT_MS", 200, 1, 400),
            session_max_bytes=_integer(env, "SESSION_MAX_BYTES", 262_144, 1024, 64 << 20),
            rate_limit_saves=_rate(env, "RATE_LIMIT_SAVES", "30/minute"),
            rate_limit_new_sessions=_rate(env, "RATE_LIMIT_NEW_SESSIONS", "10/minute"),
            # gunicorn's own variable: one list of trusted proxies for both.
            forwarded_allow_ips=_addresses(env, "FORWARDED_ALLOW_IPS", "127.0.0.1,::1"),
            # auto: ask the server (INFO cluster) at start-up; true for a cluster-mode
            # configuration endpoint or ElastiCache Serverless, false for one primary.
            redis_cluster=_cluster(env),
            # An ElastiCache RBAC (ACL) user; without it, the AUTH token is the default user's.
            redis_username=_text(env, "REDIS_USERNAME"),
            redis_auth=_choice(env, "REDIS_AUTH", "TOKEN", ("TOKEN", "IAM")).lower(),
            # The replication group id or Serverless cache name that IAM tokens are signed for.
            redis_iam_cache_name=(_text(env, "REDIS_IAM_CACHE_NAME") or "").lower() or None,
            redis_iam_serverless=_boolean(env, "REDIS_IAM_SERVERLESS", False),
            # The AWS SDKs' own variable; the region IAM tokens are signed for.
            aws_region=_text(env, "AWS_REGION"),
            # Flask 3.1's setting: keys that still verify what they signed (key rotation).
            secret_key_fallbacks=_keys(env, "SECRET_KEY_FALLBACKS"),
        )


def _check_auth(settings: Settings) -> None:
    """REDIS_AUTH=iam needs what a token is signed for, and TLS: ElastiCache takes IAM tokens
    only over TLS, and a token seen in the clear could be replayed for 15 minutes."""
    if settings.redis_auth != "iam":
        return
    needed = {
        "REDIS_USERNAME": settings.redis_username,
        "REDIS_IAM_CACHE_NAME": settings.redis_iam_cache_name,
        "AWS_REGION": settings.aws_region,
    }
    missing = [name for name, value in needed.items() if not value]
    if missing:
        raise ConfigError(f"REDIS_AUTH=iam needs {', '.join(missing)}")
    if not settings.redis_tls:
        raise ConfigError(
            "REDIS_AUTH=iam needs REDIS_TLS=true (ElastiCache takes IAM tokens over TLS only)"
        )
    if settings.redis_auth_token:
        raise ConfigError("REDIS_AUTH=iam signs its own tokens: unset REDIS_AUTH_TOKEN")


def _keys(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    """Comma-separated secret keys, each as long as SECRET_KEY must be."""
    keys = tuple(part.strip() for part in (_text(env, name) or "").split(",") if part.strip())
    if any(len(key) < 16 for key in keys):
        raise ConfigError(f"{name}: every key must have at least 16 characters")
    return keys


def _text(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name, "").strip()
    return value or None


def _integer(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = _text(env, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a whole number ({low}-{high})") from None
    if not low <= value <= high:
        raise ConfigError(f"{name}={value} is out of range ({low}-{high})")
    return value


def _boolean(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = _text(env, name)
    if raw is None:
        return default
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean (true/false)")


def _choice(env: Mapping[str, str], name: str, default: str, allowed: tuple[str, ...]) -> str:
    raw = _text(env, name)
    if raw is None:
        return default
    if raw.upper() not in allowed:
        raise ConfigError(f"{name}={raw!r} is not one of {', '.join(allowed)}")
    return raw.upper()


def _cluster(env: Mapping[str, str]) -> str:
    raw = _text(env, "REDIS_CLUSTER")
    if raw is None or raw.lower() == "auto":
        return "auto"
    if raw.lower() in _TRUE:
        return "on"
    if raw.lower() in _FALSE:
        return "off"
    raise ConfigError(f"REDIS_CLUSTER={raw!r} is not auto, true or false")


def _rate(env: Mapping[str, str], name: str, default: str) -> str:
    """A rate in the `limits` notation ("30/minute", "5 per second; 100/hour"), or "off"."""
    raw = _text(env, name) or default
    if raw.lower() == "off":
        return "off"
    try:
        parse_many(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a rate like 30/minute (or off)") from None
    return raw


def _addresses(env: Mapping[str, str], name: str, default: str) -> tuple[str, ...]:
    """Comma-separated addresses or networks, or "*" (any)."""
    raw = _text(env, name) or default
    entries = tuple(part.strip() for part in raw.split(",") if part.strip())
    for entry in entries:
        if entry == "*":
            continue
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ConfigError(f"{name}: {entry!r} is not an IP address or network") from None
    return entries


def current_settings() -> Settings:
    """The settings of the app handling the current request."""
    return current_app.extensions["settings"]
