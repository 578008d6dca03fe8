"""Configuration: read once from the environment, and a bad value stops start-up in one line."""

from __future__ import annotations

import ast
import re
import socket
from dataclasses import MISSING, fields
from pathlib import Path

import pytest

from app.config import ConfigError, Settings, Switch, body_cap, is_set, local_data_dir
from app.connection import check_server
from app.proxy import keepalive, limits, trusted_proxies
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
    "READ_CACHE_MAX_BYTES": "2097152",
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
    "PROXY_KEEPALIVE_SECONDS": "30",
    "LOG_LEVEL": "debug",
    "REPLICA_NAME": "pod-1",
    "GUNICORN_BIND": "127.0.0.1:8000",
    "WEB_CONCURRENCY": "4",
    "METRICS_PORT": "9100",
    "METRICS_HOST": "192.0.2.10",
    "PROMETHEUS_MULTIPROC_DIR": "/run/metrics",
    "SECRET_KEY_FALLBACKS": "old-key-0123456789ab, older-key-0123456789",
}
# The IAM side, which excludes an AUTH token: EVERY with these instead of REDIS_AUTH_TOKEN.
IAM = {
    "REDIS_AUTH": "IAM",
    "REDIS_IAM_CACHE_NAME": "FES-Cache",
    "REDIS_IAM_SERVERLESS": "true",
    "AWS_REGION": "eu-west-1",
}


def test_every_variable_is_read():
    s = Settings.from_env(EVERY)
    iam = Settings.from_env({k: v for k, v in EVERY.items() if k != "REDIS_AUTH_TOKEN"} | IAM)
    assert {f.metadata["variable"] for f in fields(Settings)} == set(EVERY) | set(IAM)
    assert (s.redis_port, s.redis_tls, s.redis_auth_token, s.redis_db) == (6380, True, "token", 3)
    assert (s.redis_cluster, s.redis_username, s.redis_client_cache) == (Switch.ON, "app", False)
    assert s.read_cache_max_bytes == 2 << 20
    assert (s.redis_wait_replicas, s.redis_wait_timeout_ms) == (Switch.OFF, 50)
    assert (s.session_lifetime_seconds, s.session_cookie_secure, s.session_max_bytes) == (
        600,
        True,
        4096,
    )
    assert (s.message_max_length, s.messages_max_per_session) == (100, 10)
    assert (s.rate_limit_saves, s.rate_limit_new_sessions) == ("5 per second; 100/hour", "off")
    assert s.forwarded_allow_ips == ("10.0.0.0/16", "127.0.0.1")
    assert s.proxy_keepalive_seconds == 30
    assert (s.log_level, s.replica_name) == ("DEBUG", "pod-1")
    assert (s.gunicorn_bind, s.web_concurrency) == ("127.0.0.1:8000", 4)
    assert (s.metrics_port, s.metrics_host, s.metrics_dir) == (
        9100,
        "192.0.2.10",
        Path("/run/metrics"),
    )
    assert s.secret_key_fallbacks == ("old-key-0123456789ab", "older-key-0123456789")
    # ElastiCache signs for the lower-case name.
    assert (iam.redis_auth, iam.redis_iam_cache_name) == ("iam", "fes-cache")
    assert (iam.redis_iam_serverless, iam.aws_region) == (True, "eu-west-1")
    defaults = Settings(redis_host="h", secret_key="t" * 32)
    same = [
        f.name
        for f in fields(Settings)
        if getattr(s, f.name) == getattr(defaults, f.name)
        and getattr(iam, f.name) == getattr(defaults, f.name)
    ]
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
        ({"REDIS_AUTH": "password"}, "REDIS_AUTH='password' is not token or iam"),
        ({"SECRET_KEY_FALLBACKS": "x" * 20 + ",short"}, "SECRET_KEY_FALLBACKS: every key must"),
        ({"REDIS_AUTH": "iam"}, "REDIS_AUTH=iam needs REDIS_USERNAME, REDIS_IAM_CACHE_NAME"),
        (IAM | {"REDIS_USERNAME": "app"}, "REDIS_AUTH=iam needs REDIS_TLS=true"),
        (
            IAM | {"REDIS_USERNAME": "app", "REDIS_TLS": "true", "REDIS_AUTH_TOKEN": "t"},
            "REDIS_AUTH=iam signs its own tokens: unset REDIS_AUTH_TOKEN",
        ),
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
            assert setting.default in (None, MISSING, ()), variable


def test_what_python_m_app_asks_of_the_environment(tmp_path):
    assert is_set("REDIS_HOST", BASE)
    assert not is_set("REDIS_HOST", {"REDIS_HOST": " "})
    assert local_data_dir({"LOCAL_DATA_DIR": str(tmp_path)}) == tmp_path
    assert local_data_dir({}) == REPO_ROOT / ".local-data"


def _environment_reads(path: Path) -> list[str]:
    """Where a source file reads the environment: os.getenv, or os.environ used other than
    to set a variable (``os.environ[...] = ...``, ``os.environ.update(...)``)."""
    tree = ast.parse(path.read_text())
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    reads = []
    for node in ast.walk(tree):
        code = ast.unparse(node) if isinstance(node, ast.Attribute) else ""
        if code == "os.getenv":
            reads.append(f"{path.name}:{node.lineno}")
        elif code == "os.environ":
            parent = parents[node]
            sets = isinstance(parent, ast.Subscript) and isinstance(parent.ctx, ast.Store)
            updates = isinstance(parent, ast.Attribute) and parent.attr == "update"
            if not (sets or updates):
                reads.append(f"{path.name}:{node.lineno}")
    return reads


def test_only_the_config_reads_the_environment():
    """One source per setting: no other module of app/, nor gunicorn.conf.py, reads a variable
    (python -m app and metrics_dir set some, for gunicorn and prometheus_client)."""
    sources = [*(REPO_ROOT / "app").glob("*.py"), REPO_ROOT / "gunicorn.conf.py"]
    assert [r for p in sources if p.name != "config.py" for r in _environment_reads(p)] == []
    assert _environment_reads(REPO_ROOT / "app" / "config.py")  # the check sees a read


def test_the_proxy_reads_the_body_cap_as_the_app_does():
    """nginx's cap (app.proxy) comes from MESSAGE_MAX_LENGTH alone, read and checked as the
    app reads it, so the two can never disagree; the sidecar has no Secret and no Redis."""

    def proxy_cap(env: dict[str, str]) -> int:
        return body_cap(Settings.one_from_env("message_max_length", env))

    for value in ("1", "500", "2000", "100000"):
        app = Settings.from_env({**BASE, "MESSAGE_MAX_LENGTH": value}).max_content_length
        assert proxy_cap({"MESSAGE_MAX_LENGTH": value}) == app
    assert proxy_cap({}) == Settings.from_env(BASE).max_content_length == 28_096
    with pytest.raises(ConfigError, match="MESSAGE_MAX_LENGTH"):
        proxy_cap({"MESSAGE_MAX_LENGTH": "0"})
    assert "client_max_body_size 28096;\nclient_body_buffer_size 28096;\n" in limits(28_096)


def test_the_proxy_believes_forwarded_headers_from_the_apps_own_proxies_only():
    """nginx's set_real_ip_from and its list for X-Forwarded-Proto are FORWARDED_ALLOW_IPS,
    read as the app reads it (before: every private address, so any pod could choose the
    address its limits counted); "*" is any address, as gunicorn takes it."""
    alb = Settings.one_from_env(
        "forwarded_allow_ips", {"FORWARDED_ALLOW_IPS": "127.0.0.1,10.0.1.0/24"}
    )
    written = trusted_proxies(alb)
    assert re.findall(r"^set_real_ip_from (\S+);$", written, re.M) == ["127.0.0.1", "10.0.1.0/24"]
    assert re.findall(r"^    (\S+) 1;$", written, re.M) == ["127.0.0.1", "10.0.1.0/24"]
    assert "10.0.0.0/8" not in trusted_proxies(Settings.one_from_env("forwarded_allow_ips", {}))
    anyone = trusted_proxies(("*",))
    assert re.findall(r"^set_real_ip_from (\S+);$", anyone, re.M) == ["0.0.0.0/0", "::/0"]
    # geo's default stands for 0.0.0.0/0: named again, nginx warns at every start.
    assert re.findall(r"^    (.+);$", anyone, re.M) == ["default 1"]
    twice = trusted_proxies(("127.0.0.1", "127.0.0.1"))
    assert re.findall(r"^set_real_ip_from (\S+);$", twice, re.M) == ["127.0.0.1"]
    with pytest.raises(ConfigError, match="has a scope"):  # nginx refuses fe80::1%eth0
        Settings.one_from_env("forwarded_allow_ips", {"FORWARDED_ALLOW_IPS": "fe80::1%eth0"})
    with pytest.raises(ConfigError, match="FORWARDED_ALLOW_IPS"):
        Settings.one_from_env("forwarded_allow_ips", {"FORWARDED_ALLOW_IPS": "10.0.0.1/8"})


def test_the_proxy_keeps_an_idle_client_connection_as_long_as_its_setting_says():
    """Short behind the NLB (the default), longer than the ALB's idle timeout with the ALB."""
    assert keepalive(Settings.one_from_env("proxy_keepalive_seconds", {})).endswith(
        "keepalive_timeout 20s;\n"
    )
    seconds = Settings.one_from_env("proxy_keepalive_seconds", {"PROXY_KEEPALIVE_SECONDS": "75"})
    assert keepalive(seconds).endswith("keepalive_timeout 75s;\n")
    with pytest.raises(ConfigError, match="PROXY_KEEPALIVE_SECONDS"):
        Settings.one_from_env("proxy_keepalive_seconds", {"PROXY_KEEPALIVE_SECONDS": "0"})
