"""Configuration: read once from the environment, and a bad value stops start-up in one line."""

from __future__ import annotations

import re
import socket
from dataclasses import MISSING, fields
from pathlib import Path

import pytest

from app.config import ConfigError, Settings, Switch, is_set, local_data_dir
from app.connection import check_server
from localservers.ports import free_port
from tests.support import REPO_ROOT

BASE = {"REDIS_HOST": "redis.internal", "SECRET_KEY": "s" * 32}


def test_unset_variables_take_the_fields_defaults():
    settings = Settings.from_env(BASE)
    assert settings == Settings(
        redis_host="redis.internal", secret_key="s" * 32, replica_name=socket.gethostname()
    )
    assert settings.redis_cluster is Switch.AUTO
    assert Settings.from_env({**BASE, "REDIS_PORT": "  "}).redis_port == 6379  # empty: unset


# A value other than the default for every variable.
EVERY = {
    **BASE,
    "REDIS_PORT": "6380",
    "REDIS_TLS": "true",
    "REDIS_AUTH_TOKEN": "token",
    "REDIS_DB": "3",
    "REDIS_CLUSTER": "true",
    "REDIS_USERNAME": "app",
    "REDIS_CLIENT_CACHE": "false",
    "REDIS_WAIT_REPLICAS": "OFF",
    "REDIS_WAIT_TIMEOUT_MS": "50",
    "SESSION_LIFETIME_SECONDS": "600",
    "SESSION_COOKIE_SECURE": "yes",
    "SESSION_MAX_BYTES": "4096",
    "MESSAGE_MAX_LENGTH": "100",
    "MESSAGES_MAX_PER_SESSION": "10",
    "RATE_LIMIT_SAVES": "5 per second; 100/hour",
    "RATE_LIMIT_NEW_SESSIONS": "off",
    "FORWARDED_ALLOW_IPS": "10.0.0.0/16, 127.0.0.1",
    "LOG_LEVEL": "debug",
    "REPLICA_NAME": "pod-1",
    "GUNICORN_BIND": "127.0.0.1:8000",
    "WEB_CONCURRENCY": "4",
    "METRICS_PORT": "9100",
    "PROMETHEUS_MULTIPROC_DIR": "/run/metrics",
}


def test_every_variable_is_read():
    s = Settings.from_env(EVERY)
    assert {f.metadata["variable"] for f in fields(Settings)} == set(EVERY)
    assert (s.redis_port, s.redis_tls, s.redis_auth_token, s.redis_db) == (6380, True, "token", 3)
    assert (s.redis_cluster, s.redis_username, s.redis_client_cache) == (Switch.ON, "app", False)
    assert (s.redis_wait_replicas, s.redis_wait_timeout_ms) == (Switch.OFF, 50)
    assert (s.session_lifetime_seconds, s.session_cookie_secure, s.session_max_bytes) == (
        600,
        True,
        4096,
    )
    assert (s.message_max_length, s.messages_max_per_session) == (100, 10)
    assert (s.rate_limit_saves, s.rate_limit_new_sessions) == ("5 per second; 100/hour", "off")
    assert s.forwarded_allow_ips == ("10.0.0.0/16", "127.0.0.1")
    assert (s.log_level, s.replica_name) == ("DEBUG", "pod-1")
    assert (s.gunicorn_bind, s.web_concurrency) == ("127.0.0.1:8000", 4)
    assert (s.metrics_port, s.metrics_dir) == (9100, Path("/run/metrics"))
    defaults = Settings(redis_host="h", secret_key="t" * 32)
    same = [f.name for f in fields(Settings) if getattr(s, f.name) == getattr(defaults, f.name)]
    assert same == []


@pytest.mark.parametrize(
    ("raw", "switch"),
    [
        ("auto", Switch.AUTO),
        ("AUTO", Switch.AUTO),
        ("on", Switch.ON),
        ("true", Switch.ON),
        ("1", Switch.ON),
        ("off", Switch.OFF),
        ("False", Switch.OFF),
        ("no", Switch.OFF),
    ],
)
def test_switches_take_auto_and_any_boolean_spelling(raw, switch):
    s = Settings.from_env({**BASE, "REDIS_CLUSTER": raw, "REDIS_WAIT_REPLICAS": raw})
    assert s.redis_cluster is s.redis_wait_replicas is switch


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
        ({"REDIS_WAIT_REPLICAS": "2"}, "REDIS_WAIT_REPLICAS='2' is not auto, true (on) or false"),
        ({"REDIS_WAIT_TIMEOUT_MS": "1000"}, "REDIS_WAIT_TIMEOUT_MS=1000 is out of range"),
        ({"SESSION_MAX_BYTES": "10"}, "SESSION_MAX_BYTES=10 is out of range"),
        ({"RATE_LIMIT_SAVES": "lots"}, "RATE_LIMIT_SAVES='lots' is not a rate"),
        ({"FORWARDED_ALLOW_IPS": "lb.internal"}, "'lb.internal' is not an IP address"),
        ({"REDIS_CLUSTER": "maybe"}, "REDIS_CLUSTER='maybe' is not auto, true (on) or false"),
        ({"FORWARDED_ALLOW_IPS": "10.0.0.1/16"}, "'10.0.0.1/16' is not an IP address or network"),
        ({"GUNICORN_BIND": "127.0.0.1:http"}, "GUNICORN_BIND='127.0.0.1:http': "),
        ({"WEB_CONCURRENCY": "0"}, "WEB_CONCURRENCY=0 is out of range (1-64)"),
        ({"METRICS_PORT": "-1"}, "METRICS_PORT=-1 is out of range (0-65535)"),
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


def _readme_table() -> dict[str, str]:
    """README.md's configuration table: variable -> its Default cell."""
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([A-Z_]+)` \| ([^|]+) \|", section, re.MULTILINE)
    return {variable: default.strip() for variable, default in rows}


def test_the_readme_documents_every_variable_and_its_default():
    table = _readme_table()
    by_variable = {f.metadata["variable"]: f for f in fields(Settings)}
    assert set(table) == set(by_variable)
    for variable, cell in table.items():
        setting = by_variable[variable]
        literal = re.fullmatch(r"`([^`]+)`", cell)
        if literal is not None:  # a value: what the variable set to it reads as
            assert setting.metadata["read"](variable, literal.group(1)) == setting.default, cell
        elif setting.metadata["unset"] is not None:
            assert cell == "(required)", variable
        else:  # prose ("(none)", "the hostname"): no value the table could state
            assert setting.default in (None, MISSING), variable


def test_what_python_m_app_asks_of_the_environment(tmp_path):
    assert is_set("REDIS_HOST", BASE)
    assert not is_set("REDIS_HOST", {"REDIS_HOST": " "})
    assert local_data_dir({"LOCAL_DATA_DIR": str(tmp_path)}) == tmp_path
    assert local_data_dir({}) == REPO_ROOT / ".local-data"
