"""What users see when something fails (Redis away or full, a wrong address or method, a bug): a
short page that says what is true, never a traceback. Refused input is in ``refusals``; all but
a body too large to read is answered on the message page (``views.refused``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

import redis
from flask import Flask, render_template
from redis import RedisError
from werkzeug.exceptions import HTTPException, InternalServerError

from . import metrics
from .config import current_settings
from .refusals import refuse
from .replication import NotReplicated

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5


@dataclass(frozen=True)
class Unavailable:
    """One kind of 503: its reason (a label of ``metrics.UNAVAILABLE_RESPONSES``), its page,
    whether trying again soon can help (then ``Retry-After``), and how loudly it is logged."""

    reason: str
    title: str
    message: str
    retry_after: int | None
    level: int


_TRANSIENT = Unavailable(
    "unreachable",
    "Temporarily unavailable",
    "Your messages are safe, but we cannot reach them right now. "
    "Please try again in a few seconds.",
    RETRY_AFTER_SECONDS,
    logging.WARNING,
)
_ERROR = Unavailable(
    "error",
    "Temporarily unavailable",
    "Your messages are safe, but something went wrong on our side while reaching them. "
    "It has been logged for the people who run this site.",
    None,
    logging.ERROR,
)
# In the order checked: redis-py's classes nest (an authentication failure is a ConnectionError,
# an out-of-memory refusal a ResponseError).
_KINDS: tuple[tuple[type[BaseException], Unavailable], ...] = (
    (
        # Redis refuses writes: maxmemory reached with noeviction, or with nothing left to evict.
        # It lasts until sessions expire or the cache grows (docs/failure-behaviour.md).
        redis.exceptions.OutOfMemoryError,
        Unavailable(
            "out_of_memory",
            "Messages cannot be saved right now",
            "Your messages are safe and can still be read, but the message store is full, so "
            "nothing new can be saved until it has room again. Trying again right away will "
            "not help; please try again later.",
            None,
            logging.ERROR,
        ),
    ),
    (
        NotReplicated,
        Unavailable(
            "not_replicated",
            "Not saved",
            "Your message could not be confirmed as safely stored; your other messages are "
            "safe. Please send it again in a few seconds by reloading this page: the same form "
            "is never stored twice.",
            RETRY_AFTER_SECONDS,
            logging.WARNING,
        ),
    ),
    # Credentials refused (a password changed on the server, the Pod Identity agent down):
    # logged as an error for whoever runs the site, and, since the worker recovers by itself
    # once Redis accepts them again (no restart), with Retry-After like any other outage.
    (
        redis.AuthenticationError,
        replace(
            _ERROR,
            message="Your messages are safe, but we cannot sign in to the message store right "
            "now. It has been logged for the people who run this site; please try again in "
            "a few seconds.",
            retry_after=RETRY_AFTER_SECONDS,
        ),
    ),
    (redis.ConnectionError, _TRANSIENT),
    (redis.TimeoutError, _TRANSIENT),
    (redis.BusyLoadingError, _TRANSIENT),
    (redis.ReadOnlyError, _TRANSIENT),  # a failover under way
    # A cluster's failover under way: a slot no primary serves yet (CLUSTERDOWN, MASTERDOWN),
    # redirections that outran redis-py's attempts, a key split by a reshard (TRYAGAIN).
    (redis.exceptions.ClusterError, _TRANSIENT),
    (redis.exceptions.TryAgainError, _TRANSIENT),
)


def unavailability(exc: BaseException) -> Unavailable:
    """Which kind of 503 a Redis failure is."""
    for cls, kind in _KINDS:
        if isinstance(exc, cls):
            return kind
    # A server busy running another client's script: trouble of the moment, like LOADING, but
    # redis-py has no class for the BUSY reply.
    if isinstance(exc, redis.ResponseError) and str(exc).startswith("BUSY "):
        return _TRANSIENT
    return _ERROR


_HUMAN = {
    400: "The request could not be understood.",
    403: "This form was sent from another site, so it was not accepted. To save a message, "
    "open this site's page and send it from there.",
    404: "There is no page at this address.",
    405: "This address does not accept that kind of request.",
}


def register(app: Flask) -> None:
    app.register_error_handler(RedisError, store_unavailable)
    app.register_error_handler(HTTPException, http_error)
    app.register_error_handler(InternalServerError, internal_error)


def store_unavailable(exc: Exception) -> Any:
    kind = unavailability(exc)
    log.log(
        kind.level,
        "session store unavailable: %s",
        exc,
        extra={"error": type(exc).__name__, "reason": kind.reason},
    )
    metrics.unavailable(kind.reason)
    body = render_template("error.html", title=kind.title, message=kind.message)
    headers = {} if kind.retry_after is None else {"Retry-After": str(kind.retry_after)}
    return body, 503, headers


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
