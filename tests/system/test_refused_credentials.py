"""Credentials Redis refuses after start-up, and an ACL that refuses commands but not the
credentials, against a real Valkey with an ACL user and a real gunicorn.

The gunicorn master checks the credentials once and refuses to start with one line
(tests/system/test_iam_auth.py, tests/system/test_redis_tls.py); a worker never does: a
worker that fails to boot stops gunicorn, so a worker replaced while Redis refused the
credentials took the whole pod down.
"""

from __future__ import annotations

import os
import signal

import pytest
import requests

from app.config import ConfigError, Settings
from app.connection import check_server, worker_cluster_mode
from localservers.waits import wait_until
from tests.support import command_calls, listed_messages, post_message
from tests.system.test_iam_auth import USER, add_user, change_password

PASSWORD = "first-password-0123456789"


def test_a_worker_replaced_while_the_password_is_refused_boots_and_recovers(valkey, start_replica):
    admin = valkey.client()
    add_user(admin, PASSWORD)
    replica = start_replica(
        valkey.port, "refused", REDIS_USERNAME=USER, REDIS_AUTH_TOKEN=PASSWORD, WEB_CONCURRENCY="1"
    )
    browser = requests.Session()
    assert post_message(browser, replica.url, "before").status_code == 303

    change_password(admin, "changed-on-the-server-0123")  # the app still sends PASSWORD
    (worker,) = replica.worker_pids()
    os.kill(worker, signal.SIGKILL)  # an OOM kill: gunicorn's master starts another

    def replaced() -> bool:
        assert replica.process is not None and replica.process.poll() is None, replica.log()
        pids = replica.worker_pids()
        return bool(pids) and worker not in pids

    wait_until(replaced, 30, "a new worker")
    wait_until(lambda: requests.get(f"{replica.url}/healthz", timeout=5).ok, 30, "/healthz")
    page = browser.get(f"{replica.url}/", timeout=10)  # the session's page needs a connection
    assert page.status_code == 503
    assert page.headers["Retry-After"] == "5"
    assert requests.get(f"{replica.url}/healthz", timeout=5).status_code == 200
    assert replica.process.poll() is None

    change_password(admin, PASSWORD)  # put right on the server: no restart
    wait_until(lambda: browser.get(f"{replica.url}/", timeout=10).status_code == 200, 15, "pages")
    assert post_message(browser, replica.url, "after").status_code == 303
    page = browser.get(f"{replica.url}/", timeout=10)
    assert listed_messages(page.text) == ["before", "after"]
    assert "Worker failed to boot" not in replica.log()


def _env(valkey, password: str = PASSWORD, **extra: str) -> dict[str, str]:
    return {
        "REDIS_HOST": "127.0.0.1",
        "REDIS_PORT": str(valkey.port),
        "REDIS_USERNAME": USER,
        "REDIS_AUTH_TOKEN": password,
        "SECRET_KEY": "s" * 32,
        **extra,
    }


def test_an_acl_without_dangerous_commands_starts_and_only_wrong_credentials_stop_it(
    valkey, caplog
):
    """ElastiCache's and many operators' ACLs refuse INFO (``-@dangerous``): the start-up check
    called that a wrong password, whatever REDIS_CLUSTER said."""
    admin = valkey.client()
    add_user(admin, PASSWORD, "-@dangerous")
    assert check_server(Settings.from_env(_env(valkey))) is False
    assert "refuses INFO cluster" in caplog.text
    assert check_server(Settings.from_env(_env(valkey, REDIS_CLUSTER="false"))) is False
    infos = command_calls(admin, "info")
    assert worker_cluster_mode(Settings.from_env(_env(valkey, REDIS_CLUSTER="false"))) is False
    assert command_calls(admin, "info") == infos + 1  # only this count: the worker asked none

    add_user(admin, PASSWORD, "-@dangerous", "-ping")  # nor does a refused PING mean a refusal
    assert check_server(Settings.from_env(_env(valkey))) is False
    for wrong in ("wrong-password-0123456789", ""):
        with pytest.raises(ConfigError, match="check REDIS_USERNAME and REDIS_AUTH_TOKEN"):
            check_server(Settings.from_env(_env(valkey, password=wrong)))


def test_gunicorn_serves_as_a_user_without_dangerous_commands(valkey, start_replica):
    admin = valkey.client()
    add_user(admin, PASSWORD, "-@dangerous")
    replica = start_replica(
        valkey.port, "no-dangerous", REDIS_USERNAME=USER, REDIS_AUTH_TOKEN=PASSWORD
    )
    browser = requests.Session()
    assert post_message(browser, replica.url, "kept").status_code == 303
    assert listed_messages(browser.get(f"{replica.url}/", timeout=10).text) == ["kept"]
