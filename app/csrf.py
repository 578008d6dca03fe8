"""CSRF protection, all of it: flask-wtf's tokens, bound to a secret kept in a signed cookie.

flask-wtf keeps the secret a token is bound to in the session; kept there, it would cost a
Redis key for every visitor who merely sees a form. Instead the secret lives in the signed,
HttpOnly ``csrf`` cookie (``__Host-csrf`` over HTTPS, which no sibling subdomain can set), a
signed double-submit cookie, so flask-wtf's own generation and checking stay untouched. The
session interface calls two methods of ``CsrfSecrets``: ``restore`` (cookie to session, when
the session is opened) and ``persist`` (session to cookie, when it is saved); the session
document never holds the secret (``without_secret``), and ending a session keeps it
(``clear_keeping_secret``).

Key rotation (Flask 3.1's ``SECRET_KEY_FALLBACKS``): each of the two signers here takes the
current key and the fallbacks, signs with the current key and accepts any of them. flask-wtf
1.3 signs its tokens with ``WTF_CSRF_SECRET_KEY`` (else ``SECRET_KEY``) and knows nothing of
fallbacks, but hands that value straight to itsdangerous, which accepts a list of keys (the
last one signs): ``init_app`` sets it to that list. tests/unit/test_csrf.py fails if flask-wtf
stops passing it through. A cookie that only a fallback key verifies is signed again with the
current key, so that the fallback can be dropped an hour after a rotation (the tokens' own
lifetime) without ending anyone's form.

Both hot operations are cached per worker, because they were a fifth of a page view's cost:
verifying the cookie's signature, and signing a fresh token for every page (flask-wtf signs
one per request; a token stays valid for WTF_CSRF_TIME_LIMIT, an hour, so reusing one for a
minute changes nothing a user or an attacker could notice). ``CsrfSecrets.reuse_token`` and
``CsrfSecrets.remember_token`` are the before- and after-request halves of the token cache;
the page takes its token from ``page_token``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any

from flask import Flask, Request, Response, g, request
from flask_wtf.csrf import CSRFProtect, generate_csrf
from itsdangerous import BadSignature, URLSafeSerializer
from werkzeug.exceptions import Forbidden

from .lru import LRU

CSRF_KEY = "csrf_token"  # flask-wtf's session key and form field (WTF_CSRF_FIELD_NAME)
CSRF_COOKIE = "csrf"
# Over HTTPS: a browser takes a __Host- cookie only from this exact host, over HTTPS, for path
# "/", so a sibling subdomain cannot plant its own secret (and with it, tokens it knows) in the
# victim's browser, as the session cookie (app/sessions.py).
SECURE_CSRF_COOKIE = "__Host-csrf"
TOKEN_REUSE_SECONDS = 60.0
# flask-wtf's default lifetime for a token in an open page.
TOKEN_LIFETIME_SECONDS = 3600
_CACHE_ENTRIES = 10_000

csrf = CSRFProtect()


class CsrfSecrets:
    """Per app (the cookie is signed with its key): the cookie's signer and the two caches."""

    def __init__(
        self, secret_key: str, fallbacks: Sequence[str] = (), *, secure: bool = False
    ) -> None:
        self.cookie_name = SECURE_CSRF_COOKIE if secure else CSRF_COOKIE
        self._signer = URLSafeSerializer(secret_key, salt="csrf-cookie")
        # Every key, the current one last (itsdangerous signs with the last, tries them all).
        self._any_key = URLSafeSerializer([*fallbacks, secret_key], salt="csrf-cookie")
        # Cookie value -> (secret, whether the current key signed it).
        self._verified: LRU[str, tuple[str, bool]] = LRU(_CACHE_ENTRIES)
        self._tokens: LRU[str, tuple[str, float]] = LRU(_CACHE_ENTRIES)

    def restore(self, session: MutableMapping[str, Any], request: Request) -> str | None:
        """Put the secret from the request's cookie into the session; return it, or None when
        absent, not signed by us, or signed with a fallback key (so ``persist`` signs it again
        with the current one)."""
        loaded = self._load(request.cookies.get(self.cookie_name))
        if loaded is None:
            return None
        secret, current = loaded
        # Bypass the change callback: restoring the secret is not a modification.
        dict.__setitem__(session, CSRF_KEY, secret)
        return secret if current else None

    def persist(
        self,
        session: Mapping[str, Any],
        restored: str | None,
        response: Response,
        *,
        secure: bool,
        samesite: str | None,
        path: str,
    ) -> None:
        """Set the cookie when the session holds a secret other than the one restored."""
        secret = dict.get(session, CSRF_KEY)
        if secret is None or secret == restored:
            return
        response.set_cookie(
            self.cookie_name,
            self._signer.dumps(secret),
            httponly=True,
            secure=secure,
            samesite=samesite,
            path=path,
        )

    def reuse_token(self, current_session: Mapping[str, Any]) -> None:
        """Before the view: hand flask-wtf this browser's recent token instead of a new one."""
        secret = dict.get(current_session, CSRF_KEY)
        if secret is None:
            return
        cached = self._tokens.get(secret)
        if cached is not None and time.monotonic() - cached[1] < TOKEN_REUSE_SECONDS:
            _flask_wtf_token(cached[0])
        else:
            g.csrf_secret_for_cache = secret

    def remember_token(self) -> None:
        """After the view: keep the token flask-wtf signed, for this browser's next pages."""
        secret = g.pop("csrf_secret_for_cache", None)
        token = _flask_wtf_token()
        if secret is not None and token is not None:
            self._tokens.put(secret, (token, time.monotonic()))

    def _load(self, value: str | None) -> tuple[str, bool] | None:
        if not value:
            return None
        loaded = self._verified.get(value)
        if loaded is not None:
            return loaded
        try:
            secret, current = self._signer.loads(value), True
        except BadSignature:
            try:
                secret, current = self._any_key.loads(value), False
            except BadSignature:
                return None
        if not isinstance(secret, str):
            return None
        self._verified.put(value, (secret, current))
        return secret, current


def without_secret(session: Mapping[str, Any]) -> dict[str, Any]:
    """The session's data as stored in Redis: everything but the CSRF secret."""
    return {k: v for k, v in session.items() if k != CSRF_KEY}


def clear_keeping_secret(session: MutableMapping[str, Any]) -> None:
    """Empty the session but keep the CSRF secret, so that open pages' forms stay valid."""
    secret = dict.get(session, CSRF_KEY)
    session.clear()
    if secret is not None:
        dict.__setitem__(session, CSRF_KEY, secret)


def page_token() -> str:
    """The token for the page's forms: the reused one, else one flask-wtf signs."""
    return _flask_wtf_token() or generate_csrf()


def _flask_wtf_token(token: str | None = None) -> str | None:
    """flask-wtf's per-request token, which it keeps in ``g.<field name>``: with ``token``,
    set it (``generate_csrf()`` then returns it instead of signing one); without, read it.

    The one place that relies on that undocumented slot; tests/unit/test_csrf.py fails if
    flask-wtf stops honouring it.
    """
    if token is not None:
        setattr(g, CSRF_KEY, token)
        return token
    return g.get(CSRF_KEY)


def refuse_cross_site(post: Request) -> None:
    """Refuse a form another site's page sent (the browser says so in ``Sec-Fetch-Site``) with a
    plain 403, before anything reads the form or looks the session up in Redis (the views' first
    check of a POST calls it: ``views.check_raw_form``).

    Its token would fail anyway, but the refusal would be the message page: a cross-site POST
    carries no Lax cookie, so that page made a new CSRF secret, and its cookie replaced the
    victim's (every form the victim had open then failed), and it showed the other site's text
    in this site's textarea, to be saved by a victim who pressed Save. Browsers that send no
    ``Sec-Fetch-Site`` (before 2023) get flask-wtf's check alone, as before. A sibling
    subdomain is ``same-site``, left to the token (``__Host-csrf`` over HTTPS)."""
    if post.headers.get("Sec-Fetch-Site") == "cross-site":
        raise Forbidden()


def init_app(app: Flask) -> None:
    app.config["WTF_CSRF_TIME_LIMIT"] = TOKEN_LIFETIME_SECONDS
    # flask-wtf's same-origin Referer check on HTTPS forms: secure cookies are __Host- ones,
    # which neither plain HTTP nor a sibling subdomain can set, so with Sec-Fetch-Site it only
    # still helps browsers that know neither (Internet Explorer, Edge before 79), and it
    # refused every save of a browser that sends no Referer (privacy settings, extensions).
    app.config["WTF_CSRF_SSL_STRICT"] = not app.config["SESSION_COOKIE_SECURE"]
    if fallbacks := app.config["SECRET_KEY_FALLBACKS"]:
        # flask-wtf hands this to itsdangerous as it is: a list of keys, the last one signing.
        app.config["WTF_CSRF_SECRET_KEY"] = [*fallbacks, app.secret_key]
    # flask-wtf's own hook looks up the view's exemptions before it looks at the method, on
    # every request (10 µs of a page view, for a check that never applies to a GET): its
    # documented alternative is this switch and a hook that calls protect() itself.
    app.config["WTF_CSRF_CHECK_DEFAULT"] = False
    csrf.init_app(app)
    checked = app.config["WTF_CSRF_METHODS"]

    @app.before_request
    def csrf_protect() -> None:
        if request.method in checked and app.config["WTF_CSRF_ENABLED"]:
            csrf.protect(apply_exemptions=True)
