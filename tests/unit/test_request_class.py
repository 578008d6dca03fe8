"""The app's request class parses cookies exactly as Flask's own does."""

from __future__ import annotations

import pytest
from flask import Request as FlaskRequest
from werkzeug.test import EnvironBuilder

from app.request_class import Request


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "session=abc",
        "session=abc; csrf=x.y-z",
        'a="quoted \\"value\\""; b=; c=1',
        "session=first; session=second",
        "garbage;;=;  ; x",
        # Bytes past ASCII reach the environ as latin-1 text (PEP 3333): not UTF-8, and UTF-8.
        "session=\xe9\xe9; csrf=x",
        "session=\xc3\xa9",
    ],
)
def test_cookies_match_flasks_own(header):
    headers = {} if header is None else {"Cookie": header}
    environ = EnvironBuilder(path="/", headers=headers).get_environ()
    ours, theirs = Request(environ).cookies, FlaskRequest(environ).cookies
    assert type(ours) is type(theirs)
    assert list(ours.items(multi=True)) == list(theirs.items(multi=True))


def test_the_app_uses_it(app, client):
    assert app.request_class is Request
    client.set_cookie("csrf", "not-signed")
    assert client.get("/").status_code == 200
