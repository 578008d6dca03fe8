"""The per-app objects the views use, one accessor each (like flaskr's ``get_db``).

``factory.create_app`` builds them once; code that handles a request reaches them only through
these functions (and ``config.current_settings`` for the settings), never by digging in
``current_app`` (tests/unit/test_references.py holds to it). The hooks get what they use
(the CSRF token cache, the constant headers) when they are registered.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flask import current_app

if TYPE_CHECKING:
    from .ratelimit import RateLimits
    from .sessions import MessageSessionInterface
    from .store import MessageStore


def current_store() -> MessageStore:
    """The message store of the app handling the current request."""
    return current_app.extensions["message_store"]


def current_sessions() -> MessageSessionInterface:
    """The session interface: the views' operations on the current session."""
    return current_app.session_interface  # type: ignore[return-value]


def current_rate_limits() -> RateLimits:
    """The per-client limits on saves."""
    return current_app.extensions["rate_limits"]
