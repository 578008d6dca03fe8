"""Refusing input the page's forms would never send: a 400 page that keeps the draft.

``refuse_bad_form`` runs before anything parses a POST body (from ``hooks``); ``csrf_failed``
answers flask-wtf's refusal. Both show the message page with the reason above the messages.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import unquote_to_bytes

from flask import Flask, Request, request
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import RequestEntityTooLarge

from . import metrics
from .views import render_page

log = logging.getLogger(__name__)


def register(app: Flask) -> None:
    app.register_error_handler(CSRFError, csrf_failed)


def csrf_failed(exc: CSRFError) -> Any:
    log.info("form refused: %s", exc.description)
    metrics.refused("csrf")
    return render_page(
        400,
        "This form has expired or did not come from this site, so nothing was saved. "
        "Please try again.",
        draft=request.form.get("message", ""),
    )


def refuse_bad_form(post: Request) -> Any:
    """Refuse a POST body the page's forms would never send, before anything parses it.

    - Only url-encoded forms: the page sends nothing else, and Werkzeug decodes multipart
      fields leniently, past the UTF-8 check below.
    - A chunked body (no Content-Length) over the cap: Werkzeug's capped stream stops
      reading at the cap and returns what it has, so a longer body would be cut silently
      and the cut form stored; one more byte read past the cap tells the two apart.
    - Not UTF-8: Werkzeug decodes form fields leniently (invalid bytes survive as %XX
      text), so a message with broken bytes would be stored altered; checking the raw body
      is the only place where the difference can still be seen.
    """
    if post.mimetype != "application/x-www-form-urlencoded":
        if post.content_length == 0 or (post.content_length is None and not post.mimetype):
            return None  # no body at all: nothing to refuse here (CSRF will)
        log.info("form refused: %s", post.mimetype or "no content type")
        return render_page(
            400, "The form was not sent the way this page sends it, so nothing was saved."
        )
    raw = post.get_data(cache=True)
    cap = post.max_content_length
    at_cap = post.content_length is None and cap is not None and len(raw) >= cap
    if at_cap and post.environ["wsgi.input"].read(1):
        raise RequestEntityTooLarge()
    try:
        unquote_to_bytes(raw.replace(b"+", b" ")).decode("utf-8")
    except UnicodeDecodeError:
        log.info("form refused: not UTF-8")
        metrics.refused("invalid_utf8")
        return render_page(400, "The message was not valid UTF-8 text, so nothing was saved.")
    return None
