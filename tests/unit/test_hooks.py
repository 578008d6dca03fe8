"""app/hooks.py in-process: the headers every response carries, whatever answered it.

HSTS: tests/unit/test_hostile_http.py; the request id in the logs: tests/unit/test_logs.py.
"""

from __future__ import annotations

import base64
import hashlib
import re

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from app.hooks import ConstantHeaders


def test_the_policy_allows_exactly_the_pages_own_inline_stylesheet(client) -> None:
    """A browser applies the page's <style> only if the CSP names its hash."""
    response = client.get("/")
    (style,) = re.findall(r"<style>(.*?)</style>", response.get_data(as_text=True), re.S)
    digest = base64.b64encode(hashlib.sha256(style.encode()).digest()).decode()
    header = response.headers["Content-Security-Policy"]
    policy = dict(part.strip().split(" ", 1) for part in header.split(";"))
    assert policy["style-src"] == f"'sha256-{digest}'"
    assert policy["default-src"] == "'none'"
    assert policy["form-action"] == "'self'"


def test_every_answer_carries_the_same_headers_and_its_own_request_id(client) -> None:
    answers = [client.get("/"), client.get("/healthz"), client.get("/nowhere"), client.put("/")]
    assert [a.status_code for a in answers] == [200, 200, 404, 405]
    for answer in answers:
        assert answer.headers["X-Served-By"] == "test-replica"
        assert answer.headers["Cache-Control"] == "no-store"
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
        assert "Content-Security-Policy" in answer.headers
    assert len({a.headers["X-Request-ID"] for a in answers}) == len(answers)


def test_a_500_and_a_503_carry_the_constant_headers_once(app, client, monkeypatch) -> None:
    """Added around the app: whatever answered, each header once (no duplicate from a hook)."""

    @app.get("/boom")
    def boom():
        raise RuntimeError("boom")

    def away(*args, **kwargs):
        raise RedisConnectionError("away")

    answers = [client.get("/boom")]
    client.get("/")
    monkeypatch.setattr(app.extensions["messages"], "page", away)
    answers.append(client.get("/"))
    assert [a.status_code for a in answers] == [500, 503]
    for answer in answers:
        assert answer.headers.getlist("X-Served-By") == ["test-replica"]
        assert answer.headers.getlist("Cache-Control") == ["no-store"]
        assert len(answer.headers.getlist("Content-Security-Policy")) == 1


def test_a_header_value_werkzeug_refuses_stops_the_app_being_made() -> None:
    with pytest.raises(ValueError, match="newline"):
        ConstantHeaders(lambda environ, start: [], [("X-Served-By", "a\r\nSet-Cookie: x=1")])
