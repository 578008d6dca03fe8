"""The session interface: flask-session's Redis interface, tightened.

What it changes, and why:

* JSON only. flask-session 0.8 falls back to ``pickle.loads`` when decoding fails, so anyone
  able to write to Redis could run code in the app; here an undecodable document is logged and
  treated as no session.
* The CSRF secret lives in its own signed cookie, not in Redis (``csrf.CsrfSecrets``
  restores and persists it). flask-wtf keeps its secret in the session, which would store a
  Redis key for every visitor who merely sees a form; this way a session is stored only once
  it holds something (the first saved message).
* No rewrite of an unchanged session. flask-session rewrites the whole document on every
  request; here a save stores its own changes in one script, the document is rewritten only
  when its stored part changed, and the sliding expiry is refreshed with one EXPIRE at most
  once per refresh interval per worker.
* Health checks never open a session; a Redis failure while opening one
  yields a marker session that the app turns into a 503 (Flask opens the session before any
  view or error handler runs).
* A cookie whose value is not shaped like a session id gets a fresh session without asking
  Redis. Over HTTPS the cookie is named ``__Host-session``: a browser accepts such a cookie
  only from this exact host, over HTTPS, for path ``/``, so a sibling subdomain cannot plant
  a session id in it (fixation).

What it uses of flask-session, and why no more: only its public API, that is the
``RedisSessionInterface`` constructor, ``ServerSideSession`` (the change tracking) and the
cookie settings Flask's ``SessionInterface`` provides. No private helper of flask-session is
called, overridden or subclassed (its serializer base class included): they change between
releases (its development branch renamed the serializer's abstract methods, which broke
``create_app``). tests/unit/test_session_seam.py fails, naming the clash, if a method here
shadows a private name of flask-session.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from flask import Flask, Request, Response
from flask.sessions import NullSession
from flask_session.base import ServerSideSession
from flask_session.redis import RedisSessionInterface
from redis import Redis, RedisError

from . import metrics
from .csrf import CSRF_KEY, CsrfSecrets, clear_keeping_secret, without_secret
from .lru import LRU
from .store import KEY_PREFIX, MessageStore, SessionGone, StoredSession, session_key

log = logging.getLogger(__name__)

SESSIONLESS_PATHS = frozenset({"/healthz", "/readyz"})
SID_LENGTH = 32  # random bytes; secrets.token_urlsafe makes 43 characters of them
_SID = re.compile(r"[A-Za-z0-9_-]{43}")
SECURE_COOKIE_NAME = "__Host-session"
_REFRESH_MEMORY = 50_000  # sessions whose last TTL refresh a worker remembers


class StrictJSONSerializer:
    """Session documents as JSON; anything else is rejected, never unpickled."""

    def encode(self, session: Mapping[str, Any]) -> bytes:
        return json.dumps(without_secret(session), separators=(",", ":")).encode()

    def decode(self, serialized_data: str | bytes) -> dict:
        value = json.loads(serialized_data)
        if not isinstance(value, dict):
            raise ValueError("a session document must be a JSON object")
        return value


class MessageSession(ServerSideSession):
    """A server-side session that knows whether it was loaded from Redis."""

    stored: bool = False  # loaded from Redis, as opposed to new in this request
    csrf_cookie_secret: str | None = None  # the CSRF secret as the request's cookie held it
    ended: bool = False  # destroyed or found gone: the browser's cookie is to be deleted
    cookie_due: bool = False  # created in this request: the browser needs the cookie
    document: str | None = None  # the JSON document as read from Redis
    # The messages as read with the document (one read of the session's hash per request).
    loaded_messages: list[str] | None = None

    @property
    def fingerprint(self) -> str | None:
        """A short, non-secret label for the page: the session id itself is a bearer credential."""
        if not self.stored and not self.has_content:
            return None
        return _fingerprint(self.sid)

    @property
    def has_content(self) -> bool:
        return any(key not in (CSRF_KEY, "_permanent") for key in self.keys())


def _fingerprint(sid: str) -> str:
    return hashlib.sha256(sid.encode()).hexdigest()[:12]


class UnavailableSession(NullSession):
    """Stands in for the session when Redis could not be reached while opening it."""


class MessageSessionInterface(RedisSessionInterface):
    session_class = MessageSession

    def __init__(
        self, app: Flask, store: MessageStore, lifetime_seconds: int, csrf_secrets: CsrfSecrets
    ) -> None:
        super().__init__(
            app,
            # Never used: every Redis call goes through the store. flask-session would build
            # a client of its own (and warn) for anything but a redis.Redis, a cluster's too.
            client=store.client if isinstance(store.client, Redis) else Redis(),
            key_prefix=KEY_PREFIX,  # unused by this class (session_key names the keys)
            use_signer=False,
            permanent=True,
            sid_length=SID_LENGTH,
            serialization_format="json",
        )
        self.serializer = StrictJSONSerializer()
        self.store = store
        self.lifetime_seconds = lifetime_seconds
        # Sliding expiry without a write per request: refreshing at most every tenth of the
        # lifetime (and at least once a minute) keeps the idle timeout within 10% of its value.
        self.refresh_interval = min(60.0, lifetime_seconds / 10)
        self._refreshed: LRU[str, float] = LRU(_REFRESH_MEMORY)
        self._csrf = csrf_secrets

    def get_cookie_name(self, app: Flask) -> str:
        if self.get_cookie_secure(app):
            return SECURE_COOKIE_NAME
        return super().get_cookie_name(app)

    # Reading -----------------------------------------------------------------------------

    def open_session(self, app: Flask, request: Request) -> Any:
        # Written out rather than calling flask-session's open_session, which does the same
        # plus signer handling this app does not use, and cannot tell us whether the session
        # was found.
        if request.path in SESSIONLESS_PATHS:
            return self.make_null_session(app)
        sid = request.cookies.get(self.get_cookie_name(app))
        if sid is not None and not _SID.fullmatch(sid):
            sid = None  # never one of ours: a fresh session, and Redis is not asked
        try:
            loaded = self._load(sid) if sid else None
        except RedisError as exc:
            log.warning("session store unavailable while opening a session: %s", exc)
            return UnavailableSession()
        if loaded is None:
            session = self.session_class(sid=secrets.token_urlsafe(SID_LENGTH), permanent=True)
        else:
            session = self.session_class(loaded[1], sid=sid)
            session.document = loaded[0].document
            session.loaded_messages = loaded[0].messages
            session.stored = True
        session.csrf_cookie_secret = self._csrf.restore(session, request)
        return session

    def _load(self, sid: str) -> tuple[StoredSession, dict] | None:
        """The stored session and its data; None when missing or not a JSON object."""
        stored = self.store.load(session_key(sid))
        if stored is None:
            return None
        try:
            return stored, self.serializer.decode(stored.document)
        except ValueError:
            log.warning(
                "ignoring a session document that is not JSON",
                extra={"session": _fingerprint(sid)},
            )
            return None

    # Writing -----------------------------------------------------------------------------

    def save_session(self, app: Flask, session: Any, response: Response) -> None:
        if not isinstance(session, MessageSession):
            return
        self._csrf.persist(
            session,
            session.csrf_cookie_secret,
            response,
            secure=self.get_cookie_secure(app),
            samesite=self.get_cookie_samesite(app),
            path=self.get_cookie_path(app),
        )
        if session.ended:
            response.delete_cookie(
                self.get_cookie_name(app),
                domain=self.get_cookie_domain(app),
                path=self.get_cookie_path(app),
            )
            return
        if not session.has_content:
            return
        store_id = session_key(session.sid)
        if session.modified and self.serializer.encode(session).decode() != session.document:
            # Changed by code other than append_message (which stores its own changes); not
            # when only flask-wtf's CSRF secret was added, which lives in its own cookie.
            self.store.write_document(
                store_id, self.serializer.encode(session), self.lifetime_seconds
            )
            self._remember_refresh(store_id)
        elif not self._refresh_if_due(store_id) and not session.cookie_due:
            # The cookie's expiry slides when the server's TTL does, not on every response.
            return
        response.set_cookie(
            self.get_cookie_name(app),
            session.sid,
            expires=self.get_expiration_time(app, session),
            httponly=self.get_cookie_httponly(app),
            domain=self.get_cookie_domain(app),
            path=self.get_cookie_path(app),
            secure=self.get_cookie_secure(app),
            samesite=self.get_cookie_samesite(app),
        )

    # The operations the views need ---------------------------------------------------------
    # They write to Redis inside the view, where a RedisError becomes a clean 503; Flask calls
    # save_session after the view, where an error could only be a 500.

    def messages(self, session: MessageSession) -> list[str]:
        if not session.stored:
            return []
        if session.loaded_messages is not None:
            return session.loaded_messages
        return self.store.messages(session_key(session.sid))

    def append_message(
        self, session: MessageSession, text: str, save_id: str, limit: int, max_bytes: int
    ) -> int:
        """Store one message (once per ``save_id``); a new session's document is created in
        the same script."""
        started = None
        document = None
        if not session.stored:
            started = datetime.now(UTC).isoformat(timespec="seconds")
            document = self.serializer.encode({**session, "started": started})
        store_id = session_key(session.sid)
        try:
            count = self.store.append(
                store_id,
                text,
                save_id=save_id,
                limit=limit,
                max_bytes=max_bytes,
                ttl_seconds=self.lifetime_seconds,
                document=document,
            )
        except SessionGone:
            self.end(session)
            raise
        if started is not None:
            # Already stored by the script: bypass the change callback so that
            # save_session does not write the document a second time.
            dict.__setitem__(session, "started", started)
            session.stored = True
            session.cookie_due = True
            metrics.SESSIONS_CREATED.inc()
        self._remember_refresh(store_id)
        return count

    def destroy(self, session: MessageSession) -> None:
        if session.stored:
            self._forget(session_key(session.sid))
            metrics.SESSIONS_DESTROYED.inc()
        self.end(session)

    def end(self, session: MessageSession) -> None:
        """Forget the session here and in the browser (its keys are gone from Redis)."""
        clear_keeping_secret(session)
        session.stored = False
        session.ended = True

    def _forget(self, store_id: str) -> None:
        self.store.delete(store_id)
        self._refreshed.pop(store_id, None)

    def _refresh_if_due(self, store_id: str) -> bool:
        """Slide the TTL if this worker has not done so lately; True when it did."""
        last = self._refreshed.get(store_id)
        if last is not None and time.monotonic() - last < self.refresh_interval:
            return False
        try:
            self.store.refresh(store_id, self.lifetime_seconds)
        except RedisError as exc:
            # The page is already rendered; a missed refresh only shortens the idle timeout.
            log.warning("could not refresh the session expiry: %s", exc)
            return False
        self._remember_refresh(store_id)
        return True

    def _remember_refresh(self, store_id: str) -> None:
        self._refreshed.put(store_id, time.monotonic())
