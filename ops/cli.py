"""The command-line conventions ``python -m ops.verify`` and ``python -m ops.drill`` share.

Both answer with the same exit statuses, and both show a numeric option's default in its help:
the default is written once and the help text derived from it, so the two cannot disagree.
"""

from __future__ import annotations

from typing import Any

EXIT_PASSED, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


def number(default: float, help_text: str) -> dict[str, Any]:
    """``add_argument`` keywords for an option typed as its default is, the default in its help."""
    return {"type": type(default), "default": default, "help": f"{help_text} (%(default)g)"}
