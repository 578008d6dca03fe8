"""The message pages (the same paths and forms as the original Spring Boot sample), and the
checks on the forms they receive: the raw body before anything parses it, the CSRF check's
refusal, and the message itself. What each refusal answers is a row of refusals.REFUSALS.
"""

from __future__ import annotations

import functools
import re
import secrets
from typing import Any
from urllib.parse import unquote_to_bytes

from flask import Blueprint, redirect, render_template, request, session, url_for
from flask_wtf.csrf import CSRFError
from gunicorn.http.errors import ParseException
from redis import RedisError
from werkzeug.exceptions import BadRequest, RequestEntityTooLarge
from werkzeug.wrappers import Response

from . import csrf, metrics
from .config import current_settings
from .context import current_messages
from .errors import store_unavailable
from .refusals import refuse
from .sessions import SAVED_PARAMETER, query_value
from .store import SessionFull, SessionOverBudget
from .text import has_control_characters, invisible, normalised
from .text import length as text_length

bp = Blueprint("messages", __name__)

# Each rendered form carries a random save id: the same form submitted twice (Save pressed
# again, a resent request, redis-py's retry) is stored once.
_SAVE_ID = re.compile(r"[A-Za-z0-9_-]{16,64}")
# In the URL a save redirects to when it had to start a new session: the one the browser's cookie
# named had ended (expired, or destroyed in another tab), and the page says so.
ENDED_PARAMETER = "ended"
ENDED_NOTICE = (
    "Your earlier session had ended (after {lifetime} without a visit, or destroyed in another "
    "tab), so your message started a new session."
)


@bp.get("/")
def index() -> Any:
    ended = request.environ.get("QUERY_STRING") and query_value(request, ENDED_PARAMETER) == "1"
    return render_page(notice=ENDED_NOTICE if ended else None)


@bp.post("/persistMessage")
def persist_message() -> Any:
    settings = current_settings()
    draft = request.form.get("message") or ""
    save_id = request.form.get("save_id")
    if save_id is None:
        # A page rendered before save ids existed: still safe against redis-py's retry.
        save_id = secrets.token_urlsafe(16)
    elif not _SAVE_ID.fullmatch(save_id):
        return refused("damaged_form", draft)
    # Stored, counted and budgeted as the page's textarea holds it (see app/text.py).
    text = normalised(draft).strip()
    if not text or invisible(text):
        return refused("empty", draft, save_id)
    if has_control_characters(text):
        return refused("control_characters", draft, save_id)
    length = text_length(text)
    if length > settings.message_max_length:
        return refused("too_long", draft, save_id, limit=settings.message_max_length, length=length)
    current = session._get_current_object()
    try:
        limited = current_messages().save(current, request, text, save_id)
    except SessionFull:
        return refused("over_count", draft, save_id, limit=settings.messages_max_per_session)
    except SessionOverBudget:
        return refused("over_budget", draft, save_id, kib=settings.session_max_bytes // 1024)
    if limited is not None:
        wait = limited.retry_after
        page = refused("rate_limited", draft, save_id, what=limited.reason, retry_after=wait)
        return (*page, {"Retry-After": str(wait)})
    metrics.MESSAGE_SAVES.inc()
    # The saved message's number, for the page this redirects to (see app/sessions.py).
    target = {SAVED_PARAMETER: current.saved_number}
    if current.replaced:
        target[ENDED_PARAMETER] = 1
    return redirect(url_for(".index", **target), code=303)


@bp.post("/destroy")
def destroy() -> Response:
    current_messages().destroy(session._get_current_object())
    return redirect(url_for(".index"), code=303)


@bp.before_app_request
def check_raw_form() -> Any:
    """Refuse a POST body the page's forms would never send, before anything parses it.

    App-wide, and registered before CSRFProtect's hook, whose check parses the form (see
    factory.create_app).

    - Only url-encoded forms: the page sends nothing else, and Werkzeug decodes multipart
      fields leniently, past the UTF-8 check below.
    - A chunked body (no Content-Length) over the cap: Werkzeug's capped stream stops
      reading at the cap and returns what it has, so a longer body would be cut silently
      and the cut form stored; one more byte read past the cap tells the two apart.
    - Not UTF-8: Werkzeug decodes form fields leniently (invalid bytes survive as %XX
      text), so a message with broken bytes would be stored altered; checking the raw body
      is the only place where the difference can still be seen.
    """
    post = request._get_current_object()
    if post.method != "POST" or post.routing_exception is not None:
        return None  # not one of the page's forms: dispatch answers 404, 405 or 400 (bad Host)
    csrf.refuse_cross_site(post)  # another site's form: a 403 before anything reads it
    if post.mimetype != "application/x-www-form-urlencoded":
        if post.content_length == 0 or (post.content_length is None and not post.mimetype):
            return None  # no body at all: nothing to refuse here (CSRF will)
        return refused("not_url_encoded", content_type=post.mimetype or None)
    cap = post.max_content_length
    try:
        raw = post.get_data(cache=True)
        at_cap = post.content_length is None and cap is not None and len(raw) >= cap
        past_cap = at_cap and post.environ["wsgi.input"].read(1)
    except ParseException as exc:
        # gunicorn reads a chunked body as the app asks for it, so bad framing there (a chunk
        # size that is not hex, a missing CRLF) shows up here, not in its own parser.
        raise BadRequest("The request body is not framed correctly.") from exc
    if past_cap:
        raise RequestEntityTooLarge()
    try:
        unquote_to_bytes(raw.replace(b"+", b" ")).decode("utf-8")
    except UnicodeDecodeError:
        return refused("invalid_utf8")
    return None


@bp.app_errorhandler(CSRFError)
def csrf_failed(exc: CSRFError) -> Any:
    """flask-wtf's refusal of a missing, wrong or expired token."""
    try:
        save_id = request.form.get("save_id")
        if save_id is not None and not _SAVE_ID.fullmatch(save_id):
            save_id = None
        destroying = request.endpoint == "messages.destroy"
        outcome = "the session was not destroyed" if destroying else "nothing was saved"
        # No cookie at all (blocked in the browser): trying again cannot help, so say why.
        reason = "csrf" if request.cookies else "no_cookies"
        draft = request.form.get("message", "")
        return refused(reason, draft, save_id, detail=exc.description, outcome=outcome)
    except RedisError as error:
        # Raised in an error handler, it would reach Flask as an unhandled exception (logged
        # with its traceback) before becoming the 503: answer the outage's page here.
        return store_unavailable(error)


def refused(
    reason: str, draft: str = "", save_id: str | None = None, **details: Any
) -> tuple[str, int]:
    """The message page with a refusal's message above the messages and the draft kept, in
    the refused form's own save id (when it had a well-formed one): the form shown again is the
    same form, so sending it again stores it once whatever became of the first sending."""
    status, message = refuse(reason, **details)
    return render_page(status, message, draft, save_id)


@functools.cache  # one value per process, on every page
def lifetime_text(seconds: int) -> str:
    """A session's lifetime as the page says it: "30 minutes", "1 minute", "90 seconds"."""
    minutes, rest = divmod(seconds, 60)
    if rest:
        return f"{seconds:,} second{'' if seconds == 1 else 's'}"
    return f"{minutes:,} minute{'' if minutes == 1 else 's'}"


def render_page(
    status: int = 200,
    error: str | None = None,
    draft: str = "",
    save_id: str | None = None,
    notice: str | None = None,
) -> Any:
    """The message page, also for refused input: the reason is shown above the messages,
    which are read back from Redis to show that they are intact. ``notice``: news that is no
    refusal (a template with the {lifetime} field)."""
    settings = current_settings()
    lifetime = lifetime_text(settings.session_lifetime_seconds)
    page = current_messages().page(session._get_current_object())
    return (
        render_template(
            "index.html",
            csrf_token=csrf.page_token(),
            messages=page.messages,
            fingerprint=page.fingerprint,
            started=page.started,
            lifetime=lifetime,
            replica=settings.replica_name,
            max_length=settings.message_max_length,
            error=error,
            notice=notice and notice.format(lifetime=lifetime),
            draft=draft,
            save_id=save_id or secrets.token_urlsafe(16),
        ),
        status,
    )
