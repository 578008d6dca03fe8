"""CSRF protection: flask-wtf's tokens, bound to a secret the browser keeps in a signed cookie.

flask-wtf keeps the secret a token is bound to in the session; kept there, it would cost a
Redis key for every visitor who merely sees a form. The session interface instead restores it
from, and saves it to, the signed, HttpOnly ``csrf`` cookie (a signed double-submit cookie), so
flask-wtf's own generation and checking stay untouched.

Both hot operations are cached per worker, because they were a fifth of a page view's cost:
verifying the cookie's signature, and signing a fresh token for every page (flask-wtf signs
one per request; a token stays valid for WTF_CSRF_TIME_LIMIT, an hour, so reusing one for a
minute changes nothing a user or an attacker could notice).
"""

from __future__ import annotations

import time

from flask import Flask, current_app, g
from flask_wtf.csrf import CSRFProtect
from itsdangerous import BadSignature, URLSafeSerializer

from .lru import LRU

CSRF_KEY = "csrf_token"  # flask-wtf's session key and form field (WTF_CSRF_FIELD_NAME)
CSRF_COOKIE = "csrf"
TOKEN_REUSE_SECONDS = 60.0
_CACHE_ENTRIES = 10_000

csrf = CSRFProtect()


class CsrfCookie:
    """Reads and writes the CSRF secret's cookie; verified values are remembered."""

    def __init__(self, secret_key: str) -> None:
        self._signer = URLSafeSerializer(secret_key, salt="csrf-cookie")
        self._verified: LRU[str, str] = LRU(_CACHE_ENTRIES)

    def load(self, value: str | None) -> str | None:
        if not value:
            return None
        secret = self._verified.get(value)
        if secret is not None:
            return secret
        try:
            secret = self._signer.loads(value)
        except BadSignature:
            return None
        if not isinstance(secret, str):
            return None
        self._verified.put(value, secret)
        return secret

    def dump(self, secret: str) -> str:
        return self._signer.dumps(secret)


def reuse_token(current_session: dict) -> None:
    """Before the view: hand flask-wtf this browser's recent token instead of a new one."""
    secret = dict.get(current_session, CSRF_KEY)
    if secret is None:
        return
    cached = current_app.extensions["csrf_tokens"].get(secret)
    if cached is not None and time.monotonic() - cached[1] < TOKEN_REUSE_SECONDS:
        g.csrf_token = cached[0]  # what flask-wtf's generate_csrf() returns when present
    else:
        g.csrf_secret_for_cache = secret


def remember_token() -> None:
    """After the view: keep the token flask-wtf signed, for this browser's next pages."""
    secret = g.pop("csrf_secret_for_cache", None)
    token = g.get("csrf_token")
    if secret is not None and token is not None:
        current_app.extensions["csrf_tokens"].put(secret, (token, time.monotonic()))


def init_app(app: Flask) -> None:
    csrf.init_app(app)
    app.extensions["csrf_tokens"] = LRU(_CACHE_ENTRIES)  # per app: tokens are signed with its key
