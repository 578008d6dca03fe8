"""app/validation.py in-process: a chunked body at and past the cap, and a POST with no body.

Multipart and broken UTF-8: tests/unit/test_hostile_http.py and test_views.py; the same caps
against a real gunicorn: tests/system/test_hostile_http.py.
"""

from __future__ import annotations

import io

from app.config import Settings
from tests.support import csrf_token, listed_messages, save


def _chunked_save(client, body: bytes):
    """A form POST without Content-Length, as a chunked request reaches the app."""
    return client.post(
        "/persistMessage",
        input_stream=io.BytesIO(body),
        content_type="application/x-www-form-urlencoded",
        # No Content-Length: the server has de-chunked the body and marked its end.
        headers={"Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )


def test_a_chunked_body_past_the_cap_is_refused_and_one_at_the_cap_is_read_whole(
    client, settings: Settings
) -> None:
    save(client, "first")
    token = csrf_token(client.get("/").get_data(as_text=True))
    cap = settings.max_content_length
    head = f"csrf_token={token}&message=".encode()
    # Only the padding is past the cap: a body cut there would still hold a whole message.
    over = _chunked_save(client, head + b"cut&pad=" + b"x" * cap)
    assert over.status_code == 413
    exact = head + b"exact&pad="
    assert _chunked_save(client, exact + b"x" * (cap - len(exact))).status_code == 303
    assert listed_messages(client.get("/").get_data(as_text=True)) == ["first", "exact"]


def test_a_post_without_a_body_gets_the_forms_refusal_not_an_error(client) -> None:
    response = client.post("/persistMessage")
    assert response.status_code == 400
    assert "did not come from this site" in response.get_data(as_text=True)
