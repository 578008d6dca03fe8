"""Requests a browser would not send, in-process: a multipart form, HSTS on plain HTTP.

Malformed framing and bodies past the cap, against a real gunicorn:
tests/system/test_hostile_http.py.
"""

from __future__ import annotations

from tests.support import csrf_token, listed_messages, save


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
