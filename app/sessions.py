"""The session cookie, mapped to a session in the store and back: Flask's ``SessionInterface``.

Implemented directly on Flask's interface rather than through flask-session's
``RedisSessionInterface``, because what this app needs is what that class does differently:

* A session is read from Redis only when something uses it. A save never reads it: the save
  script knows whether the session exists (and creates a new one), so a save is one round trip.
  flask-session reads the whole session when the request begins.
* A session is never rewritten unless it changed; a save stores its own change in its script,
  and the sliding expiry is refreshed with one ``EXPIRE`` at most once per refresh interval per
  worker. flask-session writes the whole session back on every request.
* The store names the keys from a hash of the session id (app/store.py): flask-session stores
  the id itself in the key name, and needs a ``redis.Redis`` (not a cluster client).
* JSON only (app/store.py): flask-session 0.8 falls back to ``pickle.loads``, so anyone able
  to write to Redis could run code in the app.

What is kept from flask-session's design: server-side sessions whose id is
``secrets.token_urlsafe(32)``, and an id from a cookie is never adopted: a cookie naming no
stored session gets a new id when the session is first stored. A cookie whose value is not
shaped like a session id is not even looked up. Over HTTPS the cookie is named
``__Host-session``: a browser accepts such a cookie only from this exact host, over HTTPS, for
path ``/``, so a sibling subdomain cannot plant a session id in it (fixation).

A save into an existing session acknowledged with a 303 redirects to ``/?saved=<n>``, the
number of the message it stored, and sets a short-lived ``saved`` cookie (``__Host-saved`` over
HTTPS) with the highest such number the browser saw: the page it redirects to, and the next
ones, may be served by another worker, whose cached copy of the session Redis has not yet told
it to drop (the invalidation travels on that worker's own connection, and nothing orders it
before the browser's next request). A cached copy holding fewer messages than the larger of the
two says is read again, so the saved message is on the next page wherever it is served. The
number is in the URL because the cookie is shared by every tab: when two tabs save at once and
their answers arrive in the other order, the cookie ends with the lower number, and only the
URL still tells the second tab's page what its save was (a page that tab reaches later another
way, by the address bar say, goes by the cookie again). The cookie covers the pages after the
redirected one (an old form sent again does not lower it); it lasts as long as a cached copy
can (read_cache.MAX_AGE_SECONDS), and goes when a session starts or ends. Neither is secret or
signed: a forged number can only make its own page views read Redis.

The CSRF secret lives in its own signed cookie, not in Redis (``csrf.CsrfSecrets`` restores and
persists it): kept in the session, it would store a Redis key for every visitor who merely sees
a form. A session is stored only once it holds something (the first saved message). Health
checks never open a session.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import re
import secrets
from collections.abc import Callable
from typing import Any

from flask import Flask, Request, Response
from flask.sessions import SessionInterface, SessionMixin
from redis import RedisError
from werkzeug.datastructures import CallbackDict

from .csrf import CSRF_KEY, CsrfSecrets, without_secret
from .read_cache import MAX_AGE_SECONDS, StoredSession
from .store import SessionStore

log = logging.getLogger(__name__)

SESSIONLESS_PATHS = frozenset({"/healthz", "/readyz"})
SID_BYTES = 32  # random bytes; secrets.token_urlsafe makes 43 characters of them
_SID = re.compile(r"[A-Za-z0-9_-]{43}")
SECURE_COOKIE_NAME = "__Host-session"
SAVED_COOKIE_NAME, SECURE_SAVED_COOKIE_NAME = "saved", "__Host-saved"
SAVED_PARAMETER = "saved"  # in the URL a save redirects to
_COUNT = re.compile(r"[0-9]{1,9}")


def new_sid() -> str:
    return secrets.token_urlsafe(SID_BYTES)


@functools.lru_cache(maxsize=4096)  # per worker: a page view shows it each time
def fingerprint(sid: str) -> str:
    """A short, non-secret label for the page: the session id itself is a bearer credential."""
    return hashlib.sha256(sid.encode()).hexdigest()[:12]


class MessageSession(CallbackDict[str, Any], SessionMixin):
    """Flask's ``session`` for one request: the session the cookie names, read from the store
    when first used (a dict method, ``stored``, ``messages``). The CSRF secret, which never
    goes to Redis, is read and set without loading anything."""

    permanent = True  # every session lasts the configured lifetime (sliding)

    def __init__(self, sid: str | None, load: Callable[[str], StoredSession | None]) -> None:
        super().__init__(on_update=_changed)
        self.sid = sid  # None: the request carried no session cookie
        self.modified = False
        self._load = load
        self._loaded = False
        self._stored: StoredSession | None = None
        self.csrf_cookie_secret: str | None = None  # the CSRF secret as the cookie held it
        self.ended = False  # destroyed: the browser's cookie is to be deleted
        self.cookie_due = False  # stored under a new id in this request: the browser needs it
        self.seen_saved = 0  # messages the browser saw saved (the saved cookie, the URL)
        self.saved_number: int | None = None  # the number of the message this request saved
        self.replaced = False  # began in place of an ended session the cookie named

    def ensure_loaded(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        if self.sid is not None:
            self._stored = self._load(self.sid)
            if self._stored is not None:
                dict.update(self, self._stored.data)

    @property
    def stored(self) -> StoredSession | None:
        """The session as stored when this request read it (None: there is none)."""
        self.ensure_loaded()
        return self._stored

    @property
    def read(self) -> bool:
        """Whether this request has read the session, and found it stored."""
        return self._loaded and self._stored is not None

    @property
    def known_absent(self) -> bool:
        """Whether this request has read the session the cookie names, and found none."""
        return self._loaded and self._stored is None and self.sid is not None

    def data_in_memory(self) -> dict[str, Any]:
        """What this request holds of the session besides the CSRF secret, without reading
        anything from Redis."""
        return {k: v for k, v in dict.items(self) if k != CSRF_KEY}

    @property
    def fingerprint(self) -> str | None:
        if self.sid is None or (self.stored is None and not self.has_content):
            return None
        return fingerprint(self.sid)

    @property
    def has_content(self) -> bool:
        self.ensure_loaded()
        return any(key != CSRF_KEY for key in dict.keys(self))

    def began(self, sid: str, data: dict[str, Any], messages: tuple[str, ...]) -> None:
        """The session was stored under the new id ``sid`` in this request (in place of the one
        the cookie named, if it named one: that one had ended)."""
        self.ensure_loaded()
        self.replaced = self.sid is not None
        self.sid = sid
        self._stored = StoredSession(data, messages, document_size=0)
        dict.update(self, data)
        self.cookie_due = True

    def end(self) -> None:
        """Forget the session here and in the browser; keep the CSRF secret, so that open
        pages' forms stay valid."""
        secret = dict.get(self, CSRF_KEY)
        dict.clear(self)
        if secret is not None:
            dict.__setitem__(self, CSRF_KEY, secret)
        self._loaded = True
        self._stored = None
        self.ended = True

    # The CSRF secret needs no load, and setting it changes nothing stored.

    def __contains__(self, key: object) -> bool:
        if key != CSRF_KEY:
            self.ensure_loaded()
        return dict.__contains__(self, key)

    def __getitem__(self, key: str) -> Any:
        if key != CSRF_KEY:
            self.ensure_loaded()
        return dict.__getitem__(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        if key != CSRF_KEY:
            self.ensure_loaded()
        return dict.get(self, key, default)

    def __setitem__(self, key: str, value: Any) -> None:
        if key == CSRF_KEY:
            dict.__setitem__(self, key, value)
            return
        self.ensure_loaded()
        super().__setitem__(key, value)


def _count(value: str | None) -> int:
    """A saved count as the cookie or the URL gives it; 0 when absent or not a count."""
    return int(value) if value is not None and _COUNT.fullmatch(value) else 0


def query_value(request: Request, name: str) -> str | None:
    """The URL's ``name`` parameter; None also for a query string that is not UTF-8, on which
    werkzeug's parser raises (gunicorn refuses such a request line today; another server
    might not, and a bad URL must not cost a 500)."""
    try:
        return request.args.get(name)
    except UnicodeDecodeError:
        return None


def _changed(session: MessageSession) -> None:
    session.modified = True


def _loading(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def loaded_first(self: MessageSession, *args: Any, **kwargs: Any) -> Any:
        self.ensure_loaded()
        return method(self, *args, **kwargs)

    return loaded_first


# Every other way to read or change the data reads the session first.
for _name in (
    "__iter__",
    "__len__",
    "__eq__",
    "__repr__",
    "__reversed__",
    "__or__",
    "__ior__",
    "__delitem__",
    "keys",
    "items",
    "values",
    "copy",
    "setdefault",
    "pop",
    "popitem",
    "update",
    "clear",
):
    setattr(MessageSession, _name, _loading(getattr(CallbackDict, _name)))
MessageSession.__hash__ = None  # type: ignore[assignment]  # a mutable mapping


class RedisSessions(SessionInterface):
    """Opens the session a cookie names (unloaded) and sends the cookie back when it is due."""

    def __init__(self, store: SessionStore, csrf: CsrfSecrets) -> None:
        self.store = store
        self._csrf = csrf

    def get_cookie_name(self, app: Flask) -> str:
        if self.get_cookie_secure(app):
            return SECURE_COOKIE_NAME
        return super().get_cookie_name(app)

    def saved_cookie_name(self, app: Flask) -> str:
        return SECURE_SAVED_COOKIE_NAME if self.get_cookie_secure(app) else SAVED_COOKIE_NAME

    def open_session(self, app: Flask, request: Request) -> Any:
        if request.path in SESSIONLESS_PATHS:
            return self.make_null_session(app)
        sid = request.cookies.get(self.get_cookie_name(app))
        if sid is not None and not _SID.fullmatch(sid):
            sid = None  # never one of ours: a fresh session, and Redis is not asked
        seen_saved = _count(request.cookies.get(self.saved_cookie_name(app)))
        if request.environ.get("QUERY_STRING"):  # parsing even an empty one costs 3.6 µs
            seen_saved = max(seen_saved, _count(query_value(request, SAVED_PARAMETER)))
        session = MessageSession(
            sid,
            functools.partial(self.store.load, at_least=seen_saved)
            if seen_saved
            else self.store.load,
        )
        session.seen_saved = seen_saved
        session.csrf_cookie_secret = self._csrf.restore(session, request)
        return session

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
            self._delete_cookie(app, response, self.get_cookie_name(app))
            self._delete_cookie(app, response, self.saved_cookie_name(app))
            return
        if session.saved_number is not None:
            response.set_cookie(
                self.saved_cookie_name(app),
                str(max(session.saved_number, session.seen_saved)),
                max_age=math.ceil(MAX_AGE_SECONDS),
                httponly=True,
                **self._flags(app),
            )
        elif session.cookie_due and session.seen_saved:
            # A new session (the old one expired or was destroyed elsewhere): its count starts
            # again, and no worker has it cached.
            self._delete_cookie(app, response, self.saved_cookie_name(app))
        # The cookie's expiry slides when the server's TTL does, not on every response: when
        # the document is stored, when a save ran (else a user saving more often than the
        # refresh interval would keep the cookie's first expiry, and the browser would drop a
        # live session when it passed), for a new id, or when this page view's refresh is due.
        slid = (
            (session.modified and self._store_document(session))
            or session.saved_number is not None
            or session.cookie_due
            or self._refresh_if_due(session)
        )
        if not slid:
            return
        if session.sid is None:
            return  # nothing stored
        response.set_cookie(
            self.get_cookie_name(app),
            session.sid,
            expires=self.get_expiration_time(app, session),
            httponly=self.get_cookie_httponly(app),
            **self._flags(app),
        )

    def _flags(self, app: Flask) -> dict[str, Any]:
        """Where this app's cookies apply and how they travel: the same for setting and deleting
        (a browser ignores a __Host- cookie, its deletion too, that is not Secure)."""
        return {
            "domain": self.get_cookie_domain(app),
            "path": self.get_cookie_path(app),
            "secure": self.get_cookie_secure(app),
            "samesite": self.get_cookie_samesite(app),
        }

    def _delete_cookie(self, app: Flask, response: Response, name: str) -> None:
        response.delete_cookie(name, httponly=self.get_cookie_httponly(app), **self._flags(app))

    def _store_document(self, session: MessageSession) -> bool:
        """Store what code other than a save changed in the session; whether it did."""
        data = without_secret(session)
        stored = session.stored
        if stored is not None and data == stored.data:
            return False  # only the CSRF secret changed, which lives in its own cookie
        sid = session.sid
        written = stored is not None and sid is not None
        if written and self.store.write_document(sid, data, new=False):  # type: ignore[arg-type]
            return True
        if not data:
            return False  # nothing to store in a new session
        # Not stored yet (or gone meanwhile): a new session, under a new id.
        sid = new_sid()
        if self.store.write_document(sid, data, new=True):
            session.began(sid, data, ())
            return True
        return False

    def _refresh_if_due(self, session: MessageSession) -> bool:
        """Slide the expiry of a session this request read, if due; True when it did."""
        if not session.read or session.sid is None:
            return False
        try:
            return self.store.refresh_if_due(session.sid)
        except RedisError as exc:
            # The page is already rendered; a missed refresh only shortens the idle timeout.
            log.warning("could not refresh the session expiry: %s", exc)
            return False
