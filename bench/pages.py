"""What every variant renders: the app's own page template, and the benchmark's message text."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flask import render_template

from app.views import lifetime_text

REPO_ROOT = Path(__file__).resolve().parent.parent
# The ceiling and the anchor render the very same files as the app (index.html extends
# base.html, which carries the page's stylesheet inline).
TEMPLATES = REPO_ROOT / "app" / "templates"

MESSAGE_LENGTH = 100
LIFETIME_SECONDS = 1800
MAX_LENGTH = 2000


def render_page(**values: Any) -> str:
    """index.html with the context the app passes; the caller gives what varies by session."""
    return render_template(
        "index.html",
        lifetime=lifetime_text(LIFETIME_SECONDS),
        max_length=MAX_LENGTH,
        error=None,
        draft="",
        **values,
    )


def message_text(index: int) -> str:
    """A deterministic message of exactly MESSAGE_LENGTH characters, like a short user note."""
    head = f"Message {index:05d}: the quick brown fox jumps over the lazy dog while the session "
    return (head + "store keeps every word safe and sound.")[:MESSAGE_LENGTH].ljust(
        MESSAGE_LENGTH, "."
    )
