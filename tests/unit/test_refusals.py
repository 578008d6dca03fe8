"""The refusal table: each row is what some request gets, counted once under its own reason.

The details of each refusal (the draft kept, Redis unchanged): tests/unit/test_views.py.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from prometheus_client import REGISTRY

from app.refusals import REFUSALS, refuse
from tests.support import csrf_token, save


def _token(client) -> str:
    return csrf_token(client.get("/").get_data(as_text=True))


def _form(client, **fields: str):
    return client.post("/persistMessage", data={"csrf_token": _token(client), **fields})


def _twice(changes: dict, text: str = "x", times: int = 2) -> Callable:
    def send(make_app):
        client = make_app(**changes).test_client()
        for _ in range(times - 1):
            assert save(client, text).status_code == 303
        return save(client, text)

    return send


def _raw(body: Callable[[str], bytes], content_type: str) -> Callable:
    def send(make_app):
        client = make_app().test_client()
        data = body(_token(client))
        return client.post("/persistMessage", data=data, content_type=content_type)

    return send


def _simple(send: Callable) -> Callable:
    return lambda make_app: send(make_app().test_client())


URLENCODED = "application/x-www-form-urlencoded"
# reason -> a request that is refused for it.
REQUESTS: dict[str, Callable] = {
    "empty": _simple(lambda c: _form(c, message=" \t ")),
    "control_characters": _simple(lambda c: _form(c, message="bell\x07")),
    "too_long": _simple(lambda c: _form(c, message="x" * 2001)),
    "damaged_form": _simple(lambda c: _form(c, message="x", save_id="not a save id!")),
    "not_url_encoded": _simple(
        lambda c: c.post(
            "/persistMessage",
            data={"message": "hi", "csrf_token": _token(c)},
            content_type="multipart/form-data",
        )
    ),
    "invalid_utf8": _raw(lambda token: b"message=%FF&csrf_token=" + token.encode(), URLENCODED),
    # With the page's cookies (a page seen first), without its token.
    "csrf": _simple(lambda c: c.get("/") and c.post("/persistMessage", data={"message": "no"})),
    # A browser that sends no cookie at all.
    "no_cookies": _simple(lambda c: c.post("/persistMessage", data={"message": "no token"})),
    "body_too_large": _raw(
        lambda token: b"message=" + b"x" * 30_000 + b"&csrf_token=" + token.encode(), URLENCODED
    ),
    "rate_limited": _twice({"rate_limit_saves": "1/minute"}),
    "over_count": _twice({"messages_max_per_session": 1}),
    "over_budget": _twice({"session_max_bytes": 4096}, "y" * 2000, times=3),
}


def _counts() -> dict[str, float]:
    name = "messageapp_message_refusals_total"
    return {r: REGISTRY.get_sample_value(name, {"reason": r}) or 0.0 for r in REFUSALS}


def test_every_row_has_a_request_here():
    assert set(REQUESTS) == set(REFUSALS)


@pytest.mark.parametrize("reason", sorted(REFUSALS))
def test_each_refusal_answers_its_row_and_is_counted_once(reason, make_app):
    before = _counts()
    response = REQUESTS[reason](make_app)
    after = _counts()
    assert response.status_code == REFUSALS[reason].status
    fixed = REFUSALS[reason].message.split("{")[0]
    assert fixed in response.get_data(as_text=True)
    assert {r: after[r] - before[r] for r in REFUSALS} == {r: float(r == reason) for r in REFUSALS}


def test_an_unknown_reason_is_a_programming_error():
    with pytest.raises(KeyError):
        refuse("made-up reason")
