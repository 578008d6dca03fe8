"""Why a request's input is refused, and what its sender is told: one table.

A refusal stores nothing and changes nothing. Each one is logged (one INFO line carrying its
``reason``), counted (``messageapp_message_refusals_total{reason}``) and answered with the
status and message of its row: on the message page, with the draft kept (views.py), or, for a
body too large to read, on the short error page (errors.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from .metrics import MESSAGE_REFUSALS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Refusal:
    status: int
    # Shown to the user; {names} are filled from the details the refusing code passes.
    message: str


# reason (the log line's and the metric's label) -> status and message.
REFUSALS = {
    "empty": Refusal(400, "Write a message before saving: it was empty."),
    # A crafted form: a browser's textarea sends no such characters (but tab and line breaks).
    "control_characters": Refusal(
        400,
        "The message holds control characters that cannot be shown, so nothing was saved.",
    ),
    "too_long": Refusal(
        400,
        "A message can be at most {limit:,} characters; this one has {length:,}. "
        "Nothing was saved.",
    ),
    "damaged_form": Refusal(400, "The form was damaged, so nothing was saved."),
    # Werkzeug decodes multipart fields leniently, past the UTF-8 check (views.check_raw_form).
    "not_url_encoded": Refusal(
        400, "The form was not sent the way this page sends it, so nothing was saved."
    ),
    "invalid_utf8": Refusal(400, "The message was not valid UTF-8 text, so nothing was saved."),
    "csrf": Refusal(
        400,
        "This form has expired or did not come from this site, so {outcome}. Please try again.",
    ),
    # The form is checked against a cookie (app/csrf.py): without cookies it can never pass.
    "no_cookies": Refusal(
        400,
        "This site needs cookies to save messages, and your browser sent none, so {outcome}. "
        "Allow cookies for this site, then reload the page and try again.",
    ),
    "body_too_large": Refusal(413, "That request was too large to accept, so nothing was saved."),
    "rate_limited": Refusal(
        429,
        "Too many {what} from your address in a short time, so nothing was saved. "
        "Please try again in {retry_after} seconds.",
    ),
    "over_count": Refusal(
        409,
        "This session already holds {limit:,} messages, the most it can keep. Nothing was "
        "saved; destroy the session to start over.",
    ),
    "over_budget": Refusal(
        409,
        "This session already holds close to {kib:,} KiB of messages, the most it can keep. "
        "Nothing was saved; destroy the session to start over.",
    ),
}

# Children made once, so that every reason shows (as 0) from the start and a refusal never
# pays for labels()'s validation.
_COUNTS = {reason: MESSAGE_REFUSALS.labels(reason) for reason in REFUSALS}


def refuse(reason: str, **details: Any) -> tuple[int, str]:
    """Log and count one refusal; its status and the message for the user.

    ``reason`` is a key of REFUSALS (anything else is a KeyError: the list stays fixed);
    ``details`` fill the message's {names} and go into the log line.
    """
    refusal = REFUSALS[reason]
    _COUNTS[reason].inc()
    log.info("refused: %s", reason, extra={"reason": reason, **details})
    return refusal.status, refusal.message.format(**details)
