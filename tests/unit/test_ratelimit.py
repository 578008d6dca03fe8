"""Per-client rate limits: who the client is, and what a refused save looks like."""

from __future__ import annotations

import pytest
from limits import parse_many
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

from app.ratelimit import Trusted
from tests.support import csrf_token, listed_messages, save


def request_from(peer: str, forwarded: str | None = None) -> Request:
    headers = {"X-Forwarded-For": forwarded} if forwarded is not None else {}
    environ = EnvironBuilder(headers=headers, environ_base={"REMOTE_ADDR": peer}).get_environ()
    return Request(environ)


@pytest.mark.parametrize(
    ("peer", "forwarded", "client"),
    [
        ("203.0.113.9", None, "203.0.113.9"),
        # Not from a trusted proxy: the header is the client's own claim, ignored.
        ("203.0.113.9", "198.51.100.1", "203.0.113.9"),
        ("10.0.0.5", "198.51.100.1", "198.51.100.1"),
        # Whatever the client prepends, the address our proxy saw is the last untrusted one.
        ("10.0.0.5", "1.2.3.4, 198.51.100.1", "198.51.100.1"),
        ("10.0.0.5", "198.51.100.1, 10.0.0.7", "198.51.100.1"),
        ("10.0.0.5", "", "10.0.0.5"),
    ],
)
def test_the_client_is_the_nearest_untrusted_address(peer, forwarded, client):
    trusted = Trusted(("10.0.0.0/8",))
    assert trusted.client_address(request_from(peer, forwarded)) == client


def test_too_many_new_sessions_answer_429_with_retry_after(make_app):
    app = make_app(rate_limit_new_sessions="2/minute", rate_limit_saves="100/minute")
    client = app.test_client()
    token = csrf_token(client.get("/").get_data(as_text=True))
    statuses = []
    for i in range(3):
        client.delete_cookie("session")
        response = client.post("/persistMessage", data={"message": f"m{i}", "csrf_token": token})
        statuses.append(response.status_code)
    assert statuses == [303, 303, 429]
    assert 1 <= int(response.headers["Retry-After"]) <= 60
    page = response.get_data(as_text=True)
    assert "Too many new sessions from your address" in page
    assert "m2" in page  # the draft is kept in the form


def test_too_many_saves_answer_429_and_store_nothing(make_app):
    client = make_app(rate_limit_saves="2/minute", rate_limit_new_sessions="off").test_client()
    token = csrf_token(client.get("/").get_data(as_text=True))
    for text in ("one", "two", "three"):
        response = client.post("/persistMessage", data={"message": text, "csrf_token": token})
    assert response.status_code == 429
    assert "Too many saves" in response.get_data(as_text=True)
    assert listed_messages(client.get("/").get_data(as_text=True)) == ["one", "two"]


def test_the_counter_key_is_the_one_limits_counts_in(make_app, fake_redis):
    """The rate limiter picks the circuit of the node its counter lives on (on a cluster) from
    that key: if ``limits`` named its keys otherwise, this fails."""
    app = make_app(rate_limit_saves="5/minute", rate_limit_new_sessions="5/minute")
    client = app.test_client()
    save(client, "counted")
    limits = app.extensions["messages"].rate_limits
    (item,) = parse_many("5/minute")
    expected = {limits.counter_key(item, kind, "127.0.0.1") for kind in ("save", "new-session")}
    counters = {key.decode() for key in fake_redis.keys("*") if not key.startswith(b"session")}
    assert counters == expected
