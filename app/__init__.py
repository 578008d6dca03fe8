"""The message app: Flask sessions in Redis, shared by every replica.

gunicorn serves ``app:create_app()``; the factory itself is in app/factory.py. Importing this
package imports none of the app's modules, so that gunicorn.conf.py and ``python -m app`` can
read the settings (app.config) and name the metrics directory before anything imports
prometheus_client, which picks its multiprocess mode once, when it is first imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .factory import create_app

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    """``app.create_app``, imported on first use (PEP 562)."""
    if name == "create_app":
        from .factory import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
