"""Redis over TLS with a password, as on ElastiCache: a real redis-server started with
--tls-port (tests/system/tls.py), the app configured exactly as on EKS: REDIS_TLS=true and
REDIS_AUTH_TOKEN.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import requests

from app import create_app
from app.config import ConfigError
from app.connection import check_server
from tests.support import csrf_token, listed_messages, save, session_keys, stored_messages


def test_replica_saves_over_tls_with_the_auth_token(tls_redis, start_replica):
    replica = start_replica(
        tls_redis.port,
        "tls-replica",
        REDIS_TLS="true",
        REDIS_AUTH_TOKEN=tls_redis.password,
        SSL_CERT_FILE=str(tls_redis.ca_file),
    )
    browser = requests.Session()
    token = csrf_token(browser.get(f"{replica.url}/", timeout=10).text)
    for text in ("over TLS", "and again"):
        saved = browser.post(
            f"{replica.url}/persistMessage",
            data={"message": text, "csrf_token": token},
            timeout=30,
        )
        assert saved.status_code == 200, saved.text
    assert listed_messages(saved.text) == ["over TLS", "and again"]
    assert browser.get(f"{replica.url}/readyz", timeout=10).json()["redis"] == "ok"
    assert len(session_keys(tls_redis.client())) == 1
    sid = browser.cookies["session"]
    assert stored_messages(tls_redis.client, sid) == ["over TLS", "and again"]


def _base(settings, tls_redis):
    return replace(
        settings, redis_port=tls_redis.port, redis_tls=True, redis_auth_token=tls_redis.password
    )


def _only_kept(tls_redis, works) -> None:
    """The one session stored is the one ``works`` (a test client) saved, holding "kept"."""
    assert len(session_keys(tls_redis.client())) == 1
    assert stored_messages(tls_redis.client, works.get_cookie("session").value) == ["kept"]


def test_without_tls_nothing_is_stored(settings, tls_redis, trusts_the_test_ca):
    """The same server refuses a client that skips TLS: the test above passes only because the
    app really uses it. Plain text on a TLS port gets no answer, as if Redis were away: 503."""
    base = _base(settings, tls_redis)
    works = create_app(base).test_client()
    assert save(works, "kept").status_code == 303
    refused = create_app(replace(base, redis_tls=False)).test_client()
    response = save(refused, "lost")
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    _only_kept(tls_redis, works)


@pytest.mark.parametrize("token", ["wrong-token", None], ids=["wrong-token", "no-token"])
def test_without_the_right_token_start_up_stops_and_nothing_is_stored(
    settings, tls_redis, trusts_the_test_ca, token
):
    """A password the server refuses stops start-up (the gunicorn master's check) with one line
    naming the variables, rather than a 503 on every request: the test above passes only
    because the app sends the token. A worker made with it boots and answers 503 (a worker
    that fails to boot stops gunicorn: tests/system/test_refused_credentials.py)."""
    base = _base(settings, tls_redis)
    works = create_app(base).test_client()
    assert save(works, "kept").status_code == 303
    with pytest.raises(ConfigError, match="REDIS_AUTH_TOKEN"):
        check_server(replace(base, redis_auth_token=token))
    refused = create_app(replace(base, redis_auth_token=token)).test_client()
    assert save(refused, "lost").status_code == 503
    _only_kept(tls_redis, works)
