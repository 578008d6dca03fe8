"""The message operations the views call: the page's messages, a save, a destroy.

They reach Redis inside the view, where a RedisError becomes a clean 503 (errors.py); Flask
saves the session after the view, where an error could only be a 500.

A save does not read the session first: the save script knows whether it exists. A cookie
naming a session that is gone (expired, or destroyed in another tab) never brings it back: the
message starts a new session, under a new id. The rate limits count before anything is stored:
every save, and a new session only when the save starts one; a form refused by them, or by a
full Redis that cannot count it, that was stored already is answered as stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from flask import Request
from redis.exceptions import OutOfMemoryError

from . import metrics
from .ratelimit import RateLimits, Refusal
from .replication import NotReplicated
from .sessions import MessageSession, new_sid
from .store import SessionGone, SessionStore


@dataclass(frozen=True)
class Page:
    """What the page shows of a session."""

    messages: tuple[str, ...]
    fingerprint: str | None
    started: str | None


class Messages:
    def __init__(self, store: SessionStore, rate_limits: RateLimits) -> None:
        self.store = store
        self.rate_limits = rate_limits

    def page(self, session: MessageSession) -> Page:
        stored = session.stored
        return Page(
            messages=() if stored is None else stored.messages,
            fingerprint=session.fingerprint,
            started=session.get("started"),
        )

    def save(
        self, session: MessageSession, request: Request, text: str, save_id: str
    ) -> Refusal | None:
        """Store one message in the session (once per ``save_id``), or in a new one.

        A Refusal when a rate limit says no; raises store.SessionFull, SessionOverBudget, or a
        RedisError (replication.NotReplicated included).
        """
        # The same form sent again after it was stored (pressed twice, or sent again after a
        # 503) is acknowledged as the save itself would be (WAIT included), not refused as if
        # nothing had been saved: by a rate limit, or by a full Redis refusing to count (the
        # script's repeat check needs no memory).
        try:
            refusal = self.rate_limits.check_save(request)
        except OutOfMemoryError:
            if self._stored_before(session, save_id, text):
                return None
            raise
        if refusal is not None:
            return None if self._stored_before(session, save_id, text) else refusal
        if session.sid is not None and not session.known_absent:
            try:
                # For the next page, wherever it is served (sessions.py: its URL and the
                # saved cookie).
                session.saved_number = self.store.save(session.sid, text, save_id, None)
            except SessionGone:
                pass  # expired or destroyed: the message starts a new session
            else:
                return None
        refusal = self.rate_limits.check_new_session(request)
        if refusal is not None:
            return refusal
        started = datetime.now(UTC).isoformat(timespec="seconds")
        document = {**session.data_in_memory(), "started": started}
        sid = new_sid()
        try:
            self.store.save(sid, text, save_id, document)
        except NotReplicated:
            # Stored, only not confirmed by a replica: the 503 still carries the new session's
            # cookie, so that the form sent again finds its save id there and stores nothing twice.
            session.began(sid, document, (text,))
            raise
        session.began(sid, document, (text,))
        metrics.SESSIONS_CREATED.inc()
        return None

    def _stored_before(self, session: MessageSession, save_id: str, text: str) -> bool:
        """Whether ``save_id`` stored ``text`` before; if so, acknowledged again (its number
        kept for the next page)."""
        number = None if session.sid is None else self.store.saved(session.sid, save_id, text)
        if number is None:
            return False
        session.saved_number = number
        return True

    def destroy(self, session: MessageSession) -> None:
        if session.sid is not None and self.store.delete(session.sid):
            metrics.SESSIONS_DESTROYED.inc()
        session.end()
