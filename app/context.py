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
    from .messages import Messages
    from .redis_client import RedisClient


def current_messages() -> Messages:
    """The message operations on the current session (the views' service)."""
    return current_app.extensions["messages"]


def current_redis() -> RedisClient:
    """The worker's guarded Redis client (for the readiness probe's report)."""
    return current_app.extensions["redis"]
