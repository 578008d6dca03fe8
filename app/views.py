"""The message pages: the same paths and forms as the original Spring Boot sample."""

from __future__ import annotations

import logging
import re
import secrets
from typing import Any

from flask import Blueprint, redirect, render_template, request, session, url_for
from werkzeug.wrappers import Response

from . import csrf, metrics
from .config import current_settings
from .context import current_messages
from .store import SessionFull, SessionOverBudget

log = logging.getLogger(__name__)

bp = Blueprint("messages", __name__)

# Each rendered form carries a random save id: the same form submitted twice (Save pressed
# again, a resent request, redis-py's retry) is stored once.
_SAVE_ID = re.compile(r"[A-Za-z0-9_-]{16,64}")


@bp.get("/")
def index() -> Any:
    return render_page()


@bp.post("/persistMessage")
def persist_message() -> Any:
    settings = current_settings()
    raw = request.form.get("message")
    text = (raw or "").strip()
    if not text:
        log.info("message refused: empty")
        metrics.refused("empty")
        return render_page(400, "Write a message before saving: it was empty.", draft=raw or "")
    if len(text) > settings.message_max_length:
        log.info("message refused: %d characters", len(text))
        metrics.refused("too_long")
        return render_page(
            400,
            f"A message can be at most {settings.message_max_length:,} characters; "
            f"this one has {len(text):,}. Nothing was saved.",
            draft=raw or "",
        )
    save_id = request.form.get("save_id")
    if save_id is None:
        # A page rendered before save ids existed: still safe against redis-py's retry.
        save_id = secrets.token_urlsafe(16)
    elif not _SAVE_ID.fullmatch(save_id):
        log.info("message refused: malformed save id")
        metrics.refused("damaged_form")
        return render_page(400, "The form was damaged, so nothing was saved.", draft=raw or "")
    current = session._get_current_object()
    try:
        refusal = current_messages().save(current, request, text, save_id)
    except SessionFull:
        log.info("message refused: session full")
        metrics.refused("over_count")
        return render_page(
            409,
            f"This session already holds {settings.messages_max_per_session:,} messages, the most "
            "it can keep. Nothing was saved; destroy the session to start over.",
            draft=raw or "",
        )
    except SessionOverBudget:
        log.info("message refused: session over its byte budget")
        metrics.refused("over_budget")
        return render_page(
            409,
            f"This session already holds close to {settings.session_max_bytes // 1024:,} KiB of "
            "messages, the most it can keep. Nothing was saved; destroy the session to start "
            "over.",
            draft=raw or "",
        )
    if refusal is not None:
        log.info("message refused: too many %s from this client", refusal.reason)
        metrics.refused("rate_limited")
        page, status = render_page(
            429,
            f"Too many {refusal.reason} from your address in a short time, so nothing was "
            f"saved. Please try again in {refusal.retry_after} seconds.",
            draft=raw or "",
        )
        return page, status, {"Retry-After": str(refusal.retry_after)}
    metrics.MESSAGE_SAVES.inc()
    return redirect(url_for(".index"), code=303)


@bp.post("/destroy")
def destroy() -> Response:
    current_messages().destroy(session._get_current_object())
    return redirect(url_for(".index"), code=303)


def render_page(status: int = 200, error: str | None = None, draft: str = "") -> Any:
    """The message page, also for refused input: the reason is shown above the messages,
    which are read back from Redis to show that they are intact."""
    settings = current_settings()
    page = current_messages().page(session._get_current_object())
    return (
        render_template(
            "index.html",
            csrf_token=csrf.page_token(),
            messages=page.messages,
            fingerprint=page.fingerprint,
            started=page.started,
            lifetime_minutes=settings.session_lifetime_seconds // 60,
            replica=settings.replica_name,
            max_length=settings.message_max_length,
            error=error,
            draft=draft,
            save_id=secrets.token_urlsafe(16),
        ),
        status,
    )
