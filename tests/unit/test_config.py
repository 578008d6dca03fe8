"""Configuration: read once from the environment, and a bad value stops start-up in one line."""

from __future__ import annotations

import pytest

from app.config import ConfigError, Settings, proxy_body_cap
from app.connection import check_server
from app.proxy import limits
from tests.support import free_port

BASE = {"REDIS_HOST": "redis.internal", "SECRET_KEY": "s" * 32}


def test_defaults():
    settings = Settings.from_env(BASE)
    assert (settings.redis_port, settings.redis_tls, settings.redis_db) == (6379, False, 0)
    assert settings.session_lifetime_seconds == 1800
    assert (settings.message_max_length, settings.messages_max_per_session) == (2000, 500)
    assert settings.redis_auth_token is None
    assert settings.redis_client_cache is True
    assert settings.replica_name  # the hostname
    assert (settings.redis_wait_replicas, settings.redis_wait_timeout_ms) == ("auto", 200)
    assert settings.session_max_bytes == 262_144
    assert (settings.rate_limit_saves, settings.rate_limit_new_sessions) == (
        "30/minute",
        "10/minute",
    )
    assert settings.forwarded_allow_ips == ("127.0.0.1", "::1")
    assert (settings.redis_cluster, settings.redis_username) == ("auto", None)


def test_every_variable_is_read():
    env = {
        **BASE,
        "REDIS_PORT": "6380",
        "REDIS_TLS": "true",
        "REDIS_AUTH_TOKEN": "token",
        "REDIS_DB": "3",
        "REDIS_CLIENT_CACHE": "false",
        "SESSION_LIFETIME_SECONDS": "600",
        "SESSION_COOKIE_SECURE": "yes",
        "MESSAGE_MAX_LENGTH": "100",
        "MESSAGES_MAX_PER_SESSION": "10",
        "LOG_LEVEL": "debug",
        "REPLICA_NAME": "pod-1",
        "REDIS_WAIT_REPLICAS": "OFF",
        "REDIS_WAIT_TIMEOUT_MS": "50",
        "SESSION_MAX_BYTES": "4096",
        "RATE_LIMIT_SAVES": "5 per second; 100/hour",
        "RATE_LIMIT_NEW_SESSIONS": "off",
        "FORWARDED_ALLOW_IPS": "10.0.0.0/16, 127.0.0.1",
        "REDIS_CLUSTER": "true",
        "REDIS_USERNAME": "app",
    }
    s = Settings.from_env(env)
    assert (s.redis_port, s.redis_tls, s.redis_auth_token, s.redis_db) == (6380, True, "token", 3)
    assert (s.redis_client_cache, s.session_lifetime_seconds, s.session_cookie_secure) == (
        False,
        600,
        True,
    )
    assert (s.message_max_length, s.messages_max_per_session) == (100, 10)
    assert (s.log_level, s.replica_name) == ("DEBUG", "pod-1")
    assert (s.redis_wait_replicas, s.redis_wait_timeout_ms, s.session_max_bytes) == (
        "off",
        50,
        4096,
    )
    assert (s.rate_limit_saves, s.rate_limit_new_sessions) == ("5 per second; 100/hour", "off")
    assert s.forwarded_allow_ips == ("10.0.0.0/16", "127.0.0.1")
    assert (s.redis_cluster, s.redis_username) == ("on", "app")
    assert Settings.from_env({**BASE, "REDIS_CLUSTER": "false"}).redis_cluster == "off"


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"REDIS_PORT": "abc"}, "REDIS_PORT='abc' is not a whole number"),
        ({"REDIS_PORT": "70000"}, "REDIS_PORT=70000 is out of range"),
        ({"REDIS_TLS": "maybe"}, "REDIS_TLS='maybe' is not a boolean (true/false)"),
        ({"REDIS_DB": "-1"}, "REDIS_DB=-1 is out of range"),
        ({"LOG_LEVEL": "loud"}, "LOG_LEVEL='loud' is not one of"),
        ({"SESSION_LIFETIME_SECONDS": "5"}, "SESSION_LIFETIME_SECONDS=5 is out of range"),
        ({"SECRET_KEY": ""}, "SECRET_KEY is not set"),
        ({"SECRET_KEY": "short"}, "SECRET_KEY is too short"),
        ({"REDIS_HOST": ""}, "REDIS_HOST is not set"),
        ({"REDIS_WAIT_REPLICAS": "2"}, "REDIS_WAIT_REPLICAS='2' is not one of"),
        ({"REDIS_WAIT_TIMEOUT_MS": "1000"}, "REDIS_WAIT_TIMEOUT_MS=1000 is out of range"),
        ({"SESSION_MAX_BYTES": "10"}, "SESSION_MAX_BYTES=10 is out of range"),
        ({"RATE_LIMIT_SAVES": "lots"}, "RATE_LIMIT_SAVES='lots' is not a rate"),
        ({"FORWARDED_ALLOW_IPS": "lb.internal"}, "'lb.internal' is not an IP address"),
        ({"REDIS_CLUSTER": "maybe"}, "REDIS_CLUSTER='maybe' is not auto, true or false"),
    ],
)
def test_invalid_values_name_the_variable(changes, named):
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({**BASE, **changes})
    assert named in str(caught.value)


def test_an_unreachable_server_is_taken_for_one_primary_unless_told(caplog):
    nobody = {**BASE, "REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(free_port())}
    assert check_server(Settings.from_env(nobody)) is False
    assert "assuming one primary" in caplog.text
    assert check_server(Settings.from_env({**nobody, "REDIS_CLUSTER": "true"})) is True
    for changes, named in (
        ({"REDIS_DB": "2"}, "REDIS_DB"),
        ({"REDIS_WAIT_REPLICAS": "on"}, "WAIT"),
    ):
        with pytest.raises(ConfigError, match=named):
            check_server(Settings.from_env({**nobody, "REDIS_CLUSTER": "true", **changes}))


def test_the_proxy_reads_the_body_cap_as_the_app_does():
    """nginx's cap (app.proxy) comes from MESSAGE_MAX_LENGTH alone, read and checked as the
    app reads it, so the two can never disagree; the sidecar has no Secret and no Redis."""
    for value in ("1", "500", "2000", "100000"):
        app = Settings.from_env({**BASE, "MESSAGE_MAX_LENGTH": value}).max_content_length
        assert proxy_body_cap({"MESSAGE_MAX_LENGTH": value}) == app
    assert proxy_body_cap({}) == Settings.from_env(BASE).max_content_length == 28_096
    with pytest.raises(ConfigError, match="MESSAGE_MAX_LENGTH"):
        proxy_body_cap({"MESSAGE_MAX_LENGTH": "0"})
    assert "client_max_body_size 28096;\nclient_body_buffer_size 28096;\n" in limits(28_096)
