"""Per-client rate limits: who the client is, and what a refused save looks like."""

from __future__ import annotations

import pytest
from limits import parse_many
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

from app.ratelimit import Trusted
from ops.page import parse_page
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
        # Whatever the client prepends, the address our proxy appended is the last one.
        ("10.0.0.5", "1.2.3.4, 198.51.100.1", "198.51.100.1"),
        # A client inside a trusted network (a pod, a host in the VPC) behind the proxy: its
        # own address, not the one it wrote before it (nginx, real_ip_recursive off, agrees).
        ("10.0.0.5", "198.51.100.1, 10.0.0.7", "10.0.0.7"),
        ("10.0.0.5", "", "10.0.0.5"),
    ],
)
def test_the_client_is_the_address_the_trusted_proxy_appended(peer, forwarded, client):
    trusted = Trusted(("10.0.0.0/8",))
    assert trusted.client_address(request_from(peer, forwarded)) == client


@pytest.mark.parametrize("everyone", [("*",), ("0.0.0.0/0", "::/0")])
@pytest.mark.parametrize(
    ("forwarded", "client"),
    [
        # An ALB keeps the header the client sent and appends the address it saw: with every
        # address trusted, only that last entry is known to come from a proxy. (Found by
        # review: with "*" the first entry, the client's own, was counted.)
        ("10.9.7.1, 198.51.100.7", "198.51.100.7"),
        ("10.9.7.1, 10.9.7.2, 198.51.100.7", "198.51.100.7"),
        (None, "203.0.113.9"),
        ("", "203.0.113.9"),
    ],
)
def test_with_every_address_trusted_the_client_is_the_last_one(everyone, forwarded, client):
    trusted = Trusted(everyone)
    assert trusted.client_address(request_from("203.0.113.9", forwarded)) == client


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


def test_a_stored_form_sent_again_at_the_limit_is_answered_as_stored(make_app, fake_redis):
    """Save pressed twice at the limit. Before, the second sending was counted and refused
    with a 429 saying nothing was saved, above a page listing the message; and Save pressed on
    that page (a new save id) stored it twice. (Found by review.)"""
    client = make_app(rate_limit_saves="2/minute", rate_limit_new_sessions="off").test_client()
    save(client, "first")
    page = parse_page(client.get("/").get_data(as_text=True))
    form = {"message": "pay rent", "csrf_token": page.csrf_token, "save_id": page.save_id}
    assert client.post("/persistMessage", data=form).status_code == 303
    again = client.post("/persistMessage", data=form)
    assert again.status_code == 303
    assert again.headers["Location"].endswith("saved=2")
    assert listed_messages(client.get("/").get_data(as_text=True)) == ["first", "pay rent"]


def test_a_refused_form_shown_again_keeps_its_save_id(make_app, fake_redis):
    """Its draft is the same form: sent again once the limit allows, it is stored once, and
    edited there, its new text is a message of its own."""
    client = make_app(rate_limit_saves="1/minute", rate_limit_new_sessions="off").test_client()
    save(client, "first")
    page = parse_page(client.get("/").get_data(as_text=True))
    form = {"message": "second", "csrf_token": page.csrf_token, "save_id": page.save_id}
    refused = client.post("/persistMessage", data=form)
    assert refused.status_code == 429
    shown = parse_page(refused.get_data(as_text=True))
    assert shown.save_id == page.save_id
    fake_redis.delete(*fake_redis.keys("LIMITS*"))  # the minute is over
    assert client.post("/persistMessage", data=form).status_code == 303
    fake_redis.delete(*fake_redis.keys("LIMITS*"))
    assert client.post("/persistMessage", data=form).status_code == 303  # stored once
    fake_redis.delete(*fake_redis.keys("LIMITS*"))
    edited = {**form, "message": "second, edited"}
    assert client.post("/persistMessage", data=edited).status_code == 303
    listed = listed_messages(client.get("/").get_data(as_text=True))
    assert listed == ["first", "second", "second, edited"]
