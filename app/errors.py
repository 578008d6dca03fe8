"""What users see when something fails (Redis away, a wrong address or method, a bug): a short
page, never a traceback. Refused input is in ``refusals``; all but a body too large to read
is answered on the message page (``views.refused``)."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, render_template
from redis import RedisError
from werkzeug.exceptions import HTTPException, InternalServerError

from .config import current_settings
from .refusals import refuse

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5
_HUMAN = {
    400: "The request could not be understood.",
    404: "There is no page at this address.",
    405: "This address does not accept that kind of request.",
}


def register(app: Flask) -> None:
    app.register_error_handler(RedisError, store_unavailable)
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


def http_error(exc: HTTPException) -> Any:
    if exc.code == 413:
        _, message = refuse("body_too_large", limit=current_settings().max_content_length)
    else:
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
