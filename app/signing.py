"""Values the app keeps in cookies, signed with its key: the session id and the CSRF secret.

A signed value is ``<value>.<signature>`` (itsdangerous' ``Signer``, HMAC with a key derived
from SECRET_KEY and a salt per cookie). A cookie that is not signed by this app is dropped
before anything uses it: a made-up session id never reaches Redis, where even a read of a key
that does not exist costs memory (the read cache's tracking remembers every key a worker read).

Key rotation (Flask 3.1's ``SECRET_KEY_FALLBACKS``): values are signed with the current key and
accepted under any of them; ``verify`` says which, so that a cookie only a fallback verified is
signed again with the current key, and the fallback can be dropped once no cookie needs it.

Verifying an HMAC costs microseconds on every request that carries the cookie, so what was
verified is remembered per worker (a bounded LRU: the cookies are the clients' to choose).
"""

from __future__ import annotations

from collections.abc import Sequence

from itsdangerous import BadSignature, Signer

from .lru import LRU

_VERIFIED_ENTRIES = 10_000


class SignedCookie:
    """Signs and verifies one cookie's values, with the app's keys and the cookie's own salt."""

    def __init__(self, secret_key: str, fallbacks: Sequence[str], salt: str) -> None:
        self._signer = Signer(secret_key, salt=salt)
        # Every key, the current one last (itsdangerous signs with the last, tries them all).
        self._any_key = Signer([*fallbacks, secret_key], salt=salt)
        # Cookie value -> (the value it carries, whether the current key signed it).
        self._verified: LRU[str, tuple[str, bool]] = LRU(_VERIFIED_ENTRIES)

    def sign(self, value: str) -> str:
        return self._signer.sign(value).decode()

    def verify(self, cookie: str | None) -> tuple[str, bool] | None:
        """The value ``cookie`` carries and whether the current key signed it; None when the
        cookie is absent or not signed by this app."""
        if not cookie:
            return None
        verified = self._verified.get(cookie)
        if verified is not None:
            return verified
        try:
            verified = self._signer.unsign(cookie).decode(), True
        except BadSignature:
            try:
                verified = self._any_key.unsign(cookie).decode(), False
            except BadSignature:
                return None
        self._verified.put(cookie, verified)
        return verified
