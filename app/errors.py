"""What users see when something is refused or fails: a short page, never a traceback."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import unquote_to_bytes

from flask import Flask, Request, render_template, request
from flask_wtf.csrf import CSRFError
from redis import RedisError
from werkzeug.exceptions import HTTPException, InternalServerError, RequestEntityTooLarge

from . import metrics
from .config import current_settings
from .views import render_page

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5
_HUMAN = {
    400: "The request could not be understood.",
    404: "There is no page at this address.",
    405: "This address does not accept that kind of request.",
    413: "That request was too large to accept, so nothing was saved.",
}


def register(app: Flask) -> None:
    app.register_error_handler(RedisError, store_unavailable)
    app.register_error_handler(CSRFError, csrf_failed)
    app.register_error_handler(HTTPException, http_error)
    app.register_error_handler(InternalServerError, internal_error)


def store_unavailable(exc: Exception) -> Any:
    log.warning("session store unavailable: %s", exc, extra={"error": type(exc).__name__})
    body = render_template(
        "error.html",
        title="Temporarily unavailable",
        message="Your messages are safe, but we cannot reach them right now. "
        "Please try again in a few seconds.",
    )
    return body, 503, {"Retry-After": str(RETRY_AFTER_SECONDS)}


def csrf_failed(exc: CSRFError) -> Any:
    log.info("form refused: %s", exc.description)
    metrics.refused("csrf")
    return render_page(
        400,
        "This form has expired or did not come from this site, so nothing was saved. "
        "Please try again.",
        draft=request.form.get("message", ""),
    )


def http_error(exc: HTTPException) -> Any:
    if exc.code == 413:
        log.info("request refused: body over %s bytes", current_settings().max_content_length)
        metrics.refused("body_too_large")
    message = _HUMAN.get(exc.code or 500, exc.description or "")
    response = exc.get_response()
    body = render_template("error.html", title=f"{exc.code} {exc.name}", message=message)
    return body, exc.code, {k: v for k, v in response.headers if k.lower() == "allow"}


def internal_error(exc: InternalServerError) -> Any:
    # Flask sends errors raised outside views (e.g. by save_session) here, wrapped.
    if isinstance(exc.original_exception, RedisError):
        return store_unavailable(exc.original_exception)
    body = render_template(
        "error.html",
        title="Something went wrong",
        message="Something went wrong on our side. Your saved messages are unaffected.",
    )
    return body, 500


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
