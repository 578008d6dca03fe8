"""Requests a browser would not send, in-process: a multipart form, HSTS on plain HTTP.

Malformed framing and bodies past the cap, against a real gunicorn:
tests/system/test_hostile_http.py.
"""

from __future__ import annotations

import pytest

from tests.support import csrf_token, listed_messages, save

FORM = "application/x-www-form-urlencoded"


def test_a_multipart_form_is_refused_with_400(client, fake_redis):
    save(client, "kept")
    token = csrf_token(client.get("/").get_data(as_text=True))
    before = sorted(fake_redis.keys("*"))
    for message in ("plain", b"\xff\xfebroken"):
        response = client.post(
            "/persistMessage",
            data={"message": message, "csrf_token": token},
            content_type="multipart/form-data",
        )
        assert response.status_code == 400
        assert "not sent the way this page sends it" in response.get_data(as_text=True)
    assert sorted(fake_redis.keys("*")) == before
    assert listed_messages(client.get("/").get_data(as_text=True)) == ["kept"]


def test_hsts_only_when_the_request_or_the_cookie_is_secure(client, make_app):
    assert "Strict-Transport-Security" not in client.get("/").headers
    secure_request = client.get("/", base_url="https://localhost")
    assert secure_request.headers["Strict-Transport-Security"] == "max-age=31536000"
    secure_cookie = make_app(session_cookie_secure=True).test_client()
    response = secure_cookie.get("/")  # plain HTTP behind a TLS-terminating load balancer
    assert response.headers["Strict-Transport-Security"] == "max-age=31536000"


@pytest.mark.parametrize(
    ("path", "status"), [("/healthz", 405), ("/readyz", 405), ("/", 405), ("/nope", 404)]
)
def test_a_form_the_page_never_sends_to_a_path_without_forms_gets_404_or_405(client, path, status):
    """Not the page's refusal (which renders the session's page: the probes have none)."""
    multipart = client.post(path, data={"a": "b"}, content_type="multipart/form-data")
    broken = client.post(path, data=b"message=%FF", content_type=FORM)
    assert (multipart.status_code, broken.status_code) == (status, status)


@pytest.mark.parametrize("host", ["a" * 64, ".a", "a..b"])
def test_a_host_werkzeug_refuses_gets_400_with_the_error_page(client, host):
    for path in ("/", "/healthz"):
        response = client.get(path, headers={"Host": host})
        assert response.status_code == 400
        assert '<a href="/">Back to your messages</a>' in response.get_data(as_text=True)
        assert response.headers["X-Request-ID"]
