"""Helpers only the tests need, shared by every layer: the repository's paths, page parsing,
the app's Redis keys and stored messages, the environment of an app under test, raw HTTP,
checkov's report, and the server logs a failed test shows.

The real servers the tests start (Valkey, a Valkey cluster, gunicorn, nginx, haproxy), free
ports and readiness waits are the ``localservers`` package's, which the benchmark uses too.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from app.redis_client import RedisClient
from app.replication import NodeReplication, ReplicaWait
from app.store import KEY_PREFIX, Limits, SessionStore, session_key
from localservers.ports import free_port
from ops.page import parse_page

REPO_ROOT = Path(__file__).resolve().parent.parent
# Recorded answers and inputs the tests of several layers read.
FIXTURES = REPO_ROOT / "tests" / "fixtures"
SECRET = "test-secret-key-0123456789abcdef"
# nginx's memory for a connection holding a request body, besides the body buffer itself
# (header buffers, request pool): measured 9.2 KB by tests/system/test_proxy.py, which
# bounds it; tests/infra/test_k8s.py sizes the proxy container's memory limit with it.
NGINX_CONNECTION_OVERHEAD = 12 * 1024


def csrf_token(page: str) -> str:
    token = parse_page(page).csrf_token
    assert token, "no CSRF token in the page"
    return token


def listed_messages(page: str) -> list[str]:
    return parse_page(page).messages


def served_by(page: str) -> str:
    replica = parse_page(page).served_by
    assert replica is not None, "no replica name in the page"
    return replica


def server_log_sections(
    item: Any, lines: int = 60, most_bytes: int = 16_384
) -> list[tuple[str, str]]:
    """The end of each server log a test used, as sections of its failure report.

    The logs live in temp folders that later runs delete, so a failure seen once (a flaky test
    in CI above all) would otherwise leave no trace of what the servers said. Found under the
    test's ``tmp_path`` and on its fixtures' servers (anything with a ``log_path``: gunicorn,
    nginx, haproxy, Valkey), alone, in a list or as a cluster's ``nodes`` (module-scoped servers
    keep their logs outside the test's ``tmp_path``); each its last ``lines`` lines, at most
    ``most_bytes``.
    Never raises: a report hook that failed would hide the failure it reports.
    """
    try:
        funcargs: dict[str, Any] = getattr(item, "funcargs", None) or {}
        paths: list[Path] = []
        if isinstance(funcargs.get("tmp_path"), Path):
            paths += sorted(funcargs["tmp_path"].rglob("*.log"))
        for value in funcargs.values():
            for server in value if isinstance(value, list | tuple) else (value,):
                for one in (server, *getattr(server, "nodes", ())):
                    if isinstance(getattr(one, "log_path", None), Path):
                        paths.append(one.log_path)
        sections = []
        for path in dict.fromkeys(paths):  # once each, in the order found
            if path.is_file():
                with path.open("rb") as log:
                    log.seek(max(0, log.seek(0, os.SEEK_END) - most_bytes))
                    tail = log.read().decode(errors="replace").splitlines()[-lines:]
                sections.append((f"server log {path} (last {len(tail)} lines)", "\n".join(tail)))
        return sections
    except Exception as exc:  # whatever it is, the test's own failure comes first
        return [("server logs unavailable", repr(exc))]


def mark_layer(items: list[pytest.Item], folder: Path, *marks: pytest.MarkDecorator) -> None:
    """Give every collected test from below ``folder`` the ``marks`` (each layer's conftest)."""
    for item in items:
        if item.path.is_relative_to(folder):
            for mark in marks:
                item.add_marker(mark)


def session_keys(client: redis.Redis | redis.RedisCluster, sid: str | None = None) -> list:
    """The app's session keys in ``client``'s Redis: every one, or the one of the id ``sid``."""
    pattern = f"{KEY_PREFIX}*" if sid is None else session_key(sid)
    return sorted(client.scan_iter(pattern))


def save(client, text: str, token: str | None = None):
    """POST a message the way the page's form does (with the page's CSRF token)."""
    if token is None:
        token = csrf_token(client.get("/").get_data(as_text=True))
    return client.post("/persistMessage", data={"message": text, "csrf_token": token})


def post_message(browser: requests.Session, base: str, text: str) -> requests.Response:
    """Save ``text`` as a browser does against a server at ``base``: the page's form with its
    CSRF token, in the browser's cookie jar; the 303 is not followed."""
    token = csrf_token(browser.get(f"{base}/", timeout=10).text)
    return browser.post(
        f"{base}/persistMessage",
        data={"message": text, "csrf_token": token},
        allow_redirects=False,
        timeout=10,
    )


def command_calls(client: redis.Redis, command: str) -> int:
    """How many times the server has run ``command`` (``INFO commandstats``)."""
    return client.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0)


def stored_messages(connect: Callable[..., redis.Redis], sid: str) -> list[str]:
    """The messages of the session ``sid`` as stored, oldest first, read by the app's own store
    (so the tests know neither its key names nor its field names). ``connect`` makes a client
    of the server given redis.Redis options (a test server's ``client``)."""
    never_waits = ReplicaWait("off", 0, lambda: NodeReplication(0, "", promoted=False))
    store = SessionStore(RedisClient(connect(), connect, cache=None), Limits(1, 1, 1), never_waits)
    stored = store.load(sid)
    return [] if stored is None else list(stored.messages)


def replica_env(valkey_port: int, name: str, **extra: str) -> dict[str, str]:
    """The environment of an app under test on the Valkey at ``valkey_port``, named ``name``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "GUNICORN"))}
    env.update(
        REDIS_HOST="127.0.0.1",
        REDIS_PORT=str(valkey_port),
        SECRET_KEY=SECRET,
        REPLICA_NAME=name,
        WEB_CONCURRENCY="2",
        # Each replica's own metrics port, so that replicas started together never collide.
        METRICS_PORT=str(free_port()),
        # Tests save far faster than a person; the limits have tests of their own.
        RATE_LIMIT_SAVES="off",
        RATE_LIMIT_NEW_SESSIONS="off",
    )
    env.update(extra)
    return env


def raw_exchange(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send bytes exactly as given (HTTP clients refuse to send malformed framing) and read
    the reply until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(data)
        reply = b""
        while chunk := conn.recv(65536):
            reply += chunk
        return reply


def venv_tool(name: str) -> str | None:
    """A console script of the test venv (beside the interpreter running pytest) first, so CI
    does not depend on PATH order; else the one on PATH; None if neither."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


def checkov_report(paths: Path | list[Path], framework: str) -> dict:
    """checkov's JSON report on one file or several (the package's own module, so no PATH
    lookup); checkov exits 1 when a check fails, anything else is a crash."""
    files = [paths] if isinstance(paths, Path) else paths
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "checkov.main", *(a for f in files for a in ("-f", str(f)))),
            *("--framework", framework, "--skip-download", "-o", "json"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode in (0, 1) and proc.stdout, f"checkov crashed: {proc.stderr[-2000:]}"
    return json.loads(proc.stdout)
