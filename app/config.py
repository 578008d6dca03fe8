"""Settings, read once from the environment.

The environment is the only source of configuration so that the same image runs locally,
in CI and on EKS, where a ConfigMap and a Secret supply these variables. Every value is
checked here, at start-up, so a typo stops the process with one line that names the
variable instead of surfacing later as a confusing runtime error.

Each setting is one field of ``Settings``: its variable, its default (written there and
nowhere else) and how its text is read. The app, gunicorn.conf.py and ``python -m app`` all
take what they need from it; README.md's configuration table documents the same fields
(tests/unit/test_config.py holds the two together).
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import Any

from flask import current_app
from gunicorn.util import parse_address
from limits import parse_many

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_CHECKOUT = Path(__file__).resolve().parent.parent

# How a variable's text becomes a value: (variable name, stripped non-empty text) -> value,
# or ConfigError naming the variable.
Reader = Callable[[str, str], Any]


class ConfigError(ValueError):
    """A variable is missing or malformed; the message names it and what is allowed."""


class Switch(StrEnum):
    """A setting that is on, off, or decided by asking the server at start-up (auto).

    A StrEnum, so a member equals its name in lower case ("on").
    """

    AUTO = "auto"
    ON = "on"
    OFF = "off"


def _text(name: str, raw: str) -> str:
    return raw


def _secret_key(name: str, raw: str) -> str:
    if len(raw) < 16:
        raise ConfigError(f"{name} is too short: use at least 16 characters (32+ random)")
    return raw


def _integer(low: int, high: int) -> Reader:
    def read(name: str, raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not a whole number ({low}-{high})") from None
        if not low <= value <= high:
            raise ConfigError(f"{name}={value} is out of range ({low}-{high})")
        return value

    return read


def _boolean(name: str, raw: str) -> bool:
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean (true/false)")


def _switch(name: str, raw: str) -> Switch:
    if raw.lower() == "auto":
        return Switch.AUTO
    if raw.lower() in _TRUE:
        return Switch.ON
    if raw.lower() in _FALSE:
        return Switch.OFF
    raise ConfigError(f"{name}={raw!r} is not auto, true (on) or false (off)")


def _log_level(name: str, raw: str) -> str:
    if raw.upper() not in _LOG_LEVELS:
        raise ConfigError(f"{name}={raw!r} is not one of {', '.join(_LOG_LEVELS)}")
    return raw.upper()


def _rate(name: str, raw: str) -> str:
    """A rate in the `limits` notation ("30/minute", "5 per second; 100/hour"), or "off"."""
    if raw.lower() == "off":
        return "off"
    try:
        parse_many(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a rate like 30/minute (or off)") from None
    return raw


def _addresses(name: str, raw: str) -> tuple[str, ...]:
    """Comma-separated addresses or networks, or "*" (any); a network with host bits set
    (10.0.0.1/16) is refused, as gunicorn refuses it."""
    entries = tuple(part.strip() for part in raw.split(",") if part.strip())
    for entry in entries:
        if entry == "*":
            continue
        try:
            ipaddress.ip_network(entry)
        except ValueError:
            raise ConfigError(f"{name}: {entry!r} is not an IP address or network") from None
        if "%" in entry:  # an IPv6 scope (fe80::1%eth0), which nginx's set_real_ip_from refuses
            raise ConfigError(f"{name}: {entry!r} has a scope (%...): give the address alone")
    return entries


def _ip_address(name: str, raw: str) -> str:
    try:
        ipaddress.ip_address(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an IP address (e.g. 0.0.0.0)") from None
    return raw


def _bind(name: str, raw: str) -> str:
    """gunicorn's own notation: HOST:PORT, [IPv6]:PORT or unix:PATH (checked as gunicorn will)."""
    try:
        parse_address(raw)
    except RuntimeError as exc:
        raise ConfigError(f"{name}={raw!r}: {exc}") from None
    return raw


def _secret_keys(name: str, raw: str) -> tuple[str, ...]:
    """Comma-separated secret keys, each as long as SECRET_KEY must be."""
    keys = tuple(part.strip() for part in raw.split(",") if part.strip())
    if any(len(key) < 16 for key in keys):
        raise ConfigError(f"{name}: every key must have at least 16 characters")
    return keys


def _redis_auth(name: str, raw: str) -> str:
    if raw.lower() not in ("token", "iam"):
        raise ConfigError(f"{name}={raw!r} is not token or iam")
    return raw.lower()


def _lower(name: str, raw: str) -> str:
    return raw.lower()


def _path(name: str, raw: str) -> Path:
    return Path(raw)


def _variable(name: str, read: Reader, unset: str | None = None) -> dict[str, Any]:
    """A field's metadata: read from variable ``name`` by ``read``. A field without a default
    is required, and ``unset`` is the line that says so when it is missing."""
    return {"variable": name, "read": read, "unset": unset}


@dataclass(frozen=True)
class Settings:
    """Everything the app, gunicorn.conf.py and ``python -m app`` read from the environment."""

    redis_host: str = field(
        metadata=_variable(
            "REDIS_HOST",
            _text,
            unset="REDIS_HOST is not set: set it to the Redis/Valkey host (the ConfigMap does "
            "this on Kubernetes), or run `python -m app`, which starts an embedded Valkey",
        )
    )
    secret_key: str = field(
        repr=False,
        metadata=_variable(
            "SECRET_KEY",
            _secret_key,
            unset="SECRET_KEY is not set: every replica must share one random secret "
            '(e.g. python -c "import secrets; print(secrets.token_hex(32))")',
        ),
    )
    # Flask 3.1's setting: earlier keys that still verify what they signed (key rotation).
    secret_key_fallbacks: tuple[str, ...] = field(
        default=(), repr=False, metadata=_variable("SECRET_KEY_FALLBACKS", _secret_keys)
    )
    redis_port: int = field(default=6379, metadata=_variable("REDIS_PORT", _integer(1, 65535)))
    redis_tls: bool = field(default=False, metadata=_variable("REDIS_TLS", _boolean))
    redis_auth_token: str | None = field(
        default=None, repr=False, metadata=_variable("REDIS_AUTH_TOKEN", _text)
    )
    redis_db: int = field(default=0, metadata=_variable("REDIS_DB", _integer(0, 15)))
    # auto: ask the server (INFO cluster) at start-up (connection.check_server); on for a
    # cluster-mode configuration endpoint or ElastiCache Serverless, off for one primary.
    redis_cluster: Switch = field(default=Switch.AUTO, metadata=_variable("REDIS_CLUSTER", _switch))
    # An ElastiCache RBAC (ACL) user; without it, the AUTH token is the default user's.
    redis_username: str | None = field(default=None, metadata=_variable("REDIS_USERNAME", _text))
    # How the app signs in to Redis (credentials.py): token (REDIS_AUTH_TOKEN and
    # REDIS_USERNAME as given; neither: no AUTH) or iam (tokens signed with the pod's role).
    redis_auth: str = field(default="token", metadata=_variable("REDIS_AUTH", _redis_auth))
    # IAM tokens are signed for this replication group id or Serverless cache name, lower case.
    redis_iam_cache_name: str | None = field(
        default=None, metadata=_variable("REDIS_IAM_CACHE_NAME", _lower)
    )
    redis_iam_serverless: bool = field(
        default=False, metadata=_variable("REDIS_IAM_SERVERLESS", _boolean)
    )
    # The AWS SDKs' own variable: the region IAM tokens are signed for.
    aws_region: str | None = field(default=None, metadata=_variable("AWS_REGION", _text))
    redis_client_cache: bool = field(
        default=True, metadata=_variable("REDIS_CLIENT_CACHE", _boolean)
    )
    # The read cache's bound per worker (app/read_cache.py): with 2 workers, 64 MiB of the app
    # container's 512 MiB at most.
    read_cache_max_bytes: int = field(
        default=32 << 20,
        metadata=_variable("READ_CACHE_MAX_BYTES", _integer(1 << 20, 1 << 30)),
    )
    # auto: wait while the primary has replicas; without one, decide (app/replication.py).
    redis_wait_replicas: Switch = field(
        default=Switch.AUTO, metadata=_variable("REDIS_WAIT_REPLICAS", _switch)
    )
    # Below the 0.5 s socket timeout, so a slow replica costs a 503, not a retry.
    redis_wait_timeout_ms: int = field(
        default=200, metadata=_variable("REDIS_WAIT_TIMEOUT_MS", _integer(1, 400))
    )
    session_lifetime_seconds: int = field(
        default=1800, metadata=_variable("SESSION_LIFETIME_SECONDS", _integer(60, 2_592_000))
    )
    session_cookie_secure: bool = field(
        default=False, metadata=_variable("SESSION_COOKIE_SECURE", _boolean)
    )
    session_max_bytes: int = field(
        default=262_144, metadata=_variable("SESSION_MAX_BYTES", _integer(1024, 64 << 20))
    )
    message_max_length: int = field(
        default=2000, metadata=_variable("MESSAGE_MAX_LENGTH", _integer(1, 100_000))
    )
    messages_max_per_session: int = field(
        default=500, metadata=_variable("MESSAGES_MAX_PER_SESSION", _integer(1, 1_000_000))
    )
    rate_limit_saves: str = field(
        default="30/minute", metadata=_variable("RATE_LIMIT_SAVES", _rate)
    )
    rate_limit_new_sessions: str = field(
        default="10/minute", metadata=_variable("RATE_LIMIT_NEW_SESSIONS", _rate)
    )
    # gunicorn's own variable: one list of trusted proxies for gunicorn and the rate limits.
    forwarded_allow_ips: tuple[str, ...] = field(
        default=("127.0.0.1", "::1"), metadata=_variable("FORWARDED_ALLOW_IPS", _addresses)
    )
    # The pod's nginx sidecar only (app/proxy.py): how long an idle client connection stays open.
    proxy_keepalive_seconds: int = field(
        default=20, metadata=_variable("PROXY_KEEPALIVE_SECONDS", _integer(1, 3600))
    )
    log_level: str = field(default="INFO", metadata=_variable("LOG_LEVEL", _log_level))
    replica_name: str = field(
        default_factory=socket.gethostname, metadata=_variable("REPLICA_NAME", _text)
    )
    # gunicorn's own process (gunicorn.conf.py): all interfaces, as a container needs.
    gunicorn_bind: str = field(default="0.0.0.0:8080", metadata=_variable("GUNICORN_BIND", _bind))
    web_concurrency: int = field(default=2, metadata=_variable("WEB_CONCURRENCY", _integer(1, 64)))
    # Prometheus metrics, served by the gunicorn master (metrics_server.serve); port 0: none.
    metrics_port: int = field(default=9090, metadata=_variable("METRICS_PORT", _integer(0, 65535)))
    # Loopback unless told: the pod sets 0.0.0.0, where its scrapers reach it (k8s/config.env).
    metrics_host: str = field(default="127.0.0.1", metadata=_variable("METRICS_HOST", _ip_address))
    # prometheus_client's own variable; unset, gunicorn.conf.py makes one (app/metrics_dir.py).
    metrics_dir: Path | None = field(
        default=None, metadata=_variable("PROMETHEUS_MULTIPROC_DIR", _path)
    )

    def __post_init__(self) -> None:
        """REDIS_AUTH=iam needs what a token is signed for, and TLS: ElastiCache takes IAM
        tokens only over TLS, and a token seen in the clear could be replayed for 15 minutes."""
        if self.redis_auth != "iam":
            return
        needed = {
            "REDIS_USERNAME": self.redis_username,
            "REDIS_IAM_CACHE_NAME": self.redis_iam_cache_name,
            "AWS_REGION": self.aws_region,
        }
        missing = [name for name, value in needed.items() if not value]
        if missing:
            raise ConfigError(f"REDIS_AUTH=iam needs {', '.join(missing)}")
        if not self.redis_tls:
            raise ConfigError(
                "REDIS_AUTH=iam needs REDIS_TLS=true (ElastiCache takes IAM tokens over TLS only)"
            )
        if self.redis_auth_token:
            raise ConfigError("REDIS_AUTH=iam signs its own tokens: unset REDIS_AUTH_TOKEN")

    @property
    def max_content_length(self) -> int:
        """The largest request body worth reading (see ``body_cap``)."""
        return body_cap(self.message_max_length)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read every field's variable; unset or empty ones take the field's default."""
        env = os.environ if environ is None else environ
        values = {}
        for setting in fields(cls):
            variable = setting.metadata["variable"]
            raw = env.get(variable, "").strip()
            if raw:
                values[setting.name] = setting.metadata["read"](variable, raw)
            elif setting.metadata["unset"] is not None:
                raise ConfigError(setting.metadata["unset"])
        return cls(**values)

    @classmethod
    def one_from_env(cls, name: str, environ: Mapping[str, str] | None = None) -> Any:
        """The setting ``name`` alone, read and checked as ``from_env`` reads it (its default
        when unset): for the pod's nginx sidecar (app/proxy.py), which is given the few
        settings it reads and nothing else (no Secret, no Redis host)."""
        env = os.environ if environ is None else environ
        (setting,) = [f for f in fields(cls) if f.name == name]
        variable = setting.metadata["variable"]
        raw = env.get(variable, "").strip()
        return setting.metadata["read"](variable, raw) if raw else setting.default


def body_cap(message_max_length: int) -> int:
    """The largest request body worth reading, for the app and for nginx in front of it.

    Derived rather than configured: a maximal message percent-encodes to at most 12 bytes per
    character (4 UTF-8 bytes, each as %XX), plus room for the token.
    """
    return message_max_length * 12 + 4096


def is_set(variable: str, environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``variable`` has a value: ``python -m app`` supplies a local REDIS_HOST and
    SECRET_KEY when they have none."""
    env = os.environ if environ is None else environ
    return bool(env.get(variable, "").strip())


def local_data_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where ``python -m app`` keeps its embedded Valkey's data and its SECRET_KEY:
    LOCAL_DATA_DIR, by default the checkout's git-ignored ``.local-data``."""
    env = os.environ if environ is None else environ
    return Path(env.get("LOCAL_DATA_DIR", "").strip() or _CHECKOUT / ".local-data")


def current_settings() -> Settings:
    """The settings of the app handling the current request."""
    return current_app.extensions["settings"]
