"""What a drill records while it runs, and the check of its saves against the pages read afterwards.

Plain data, no I/O: the load, the disruptions and the read-back fill it in; the report reads it.
Times are wall-clock seconds (``time.time()``), the clock AWS's event times are compared with.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

# No answer at all: the connection was refused, reset or timed out (Locust reports status 0).
NO_ANSWER = 0


@dataclass(frozen=True)
class Answer:
    """One request: what it was, when it started, how long it took, who answered how."""

    kind: str  # "page" (GET /) or "save" (POST /persistMessage)
    started: float
    milliseconds: float
    status: int  # the HTTP status, or NO_ANSWER
    served_by: str | None  # X-Served-By: the pod's name

    @property
    def failed(self) -> bool:
        """The user saw an error page or nothing: a 5xx (503 while Redis is away) or no answer."""
        return self.status == NO_ANSWER or self.status >= 500


@dataclass
class SessionRecord:
    """One browser session: its cookie jar, the saves it sent and those acknowledged (303), in
    the order sent; after the load, what its page listed (None: the page could not be read)."""

    number: int
    cookies: Any  # the session's requests cookie jar
    sent: list[str] = field(default_factory=list)
    acknowledged: list[str] = field(default_factory=list)
    listed: list[str] | None = None
    destroyed: bool = False


@dataclass(frozen=True)
class Mark:
    """A point on the timeline: something the drill did or AWS reported."""

    at: float
    text: str


@dataclass
class Disruption:
    """One disruption as it went: started when the drill set it off, ended when it was reported
    complete (ElastiCache's recovery event, ``kubectl rollout status``); ``error`` if it was not."""

    name: str
    description: str
    started: float | None = None
    ended: float | None = None
    marks: list[Mark] = field(default_factory=list)
    error: str | None = None

    def mark(self, text: str, at: float) -> None:
        self.marks.append(Mark(at, text))

    @property
    def completed(self) -> bool:
        return self.ended is not None and self.error is None


@dataclass
class Run:
    """Everything one drill run saw."""

    url: str
    users: int
    rate: float
    save_every: int
    tag: str  # in every message this run saves, so its saves are told from anyone else's
    started: float = 0.0
    load_stopped: float = 0.0
    answers: list[Answer] = field(default_factory=list)
    sessions: list[SessionRecord] = field(default_factory=list)
    disruptions: list[Disruption] = field(default_factory=list)
    # Set when the load is to stop: a user waiting to resend a save gives up instead.
    stopping: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True)
class Audit:
    """The saves against the pages: what must be zero, and what is allowed."""

    sessions: int
    unread: int  # sessions whose page could not be read afterwards: nothing can be said of them
    sent: int
    acknowledged: int
    lost: int  # acknowledged (303), not listed
    duplicated: int  # listed more than once
    foreign: int  # listed, but never sent by this session
    out_of_order: int  # sessions whose acknowledged saves are listed in another order
    # Sent, answered with an error, yet listed once: allowed (the answer, not the save, was lost).
    stored_unacknowledged: int

    @property
    def passed(self) -> bool:
        return self.acknowledged > 0 and not (
            self.unread or self.lost or self.duplicated or self.foreign or self.out_of_order
        )


def audit(sessions: list[SessionRecord]) -> Audit:
    """Check every session's acknowledged saves against the messages its page lists (sessions
    that never sent a save hold nothing to check and are left out)."""
    sessions = [record for record in sessions if record.sent]
    counts: Counter[str] = Counter()
    for record in sessions:
        counts["sent"] += len(record.sent)
        counts["acknowledged"] += len(record.acknowledged)
        if record.listed is None:
            counts["unread"] += 1
            continue
        listed = Counter(record.listed)
        counts["lost"] += sum(1 for text in record.acknowledged if text not in listed)
        counts["duplicated"] += sum(n - 1 for n in listed.values() if n > 1)
        sent = set(record.sent)
        counts["foreign"] += sum(1 for text in listed if text not in sent)
        acknowledged = set(record.acknowledged)
        counts["stored_unacknowledged"] += sum(1 for text in sent - acknowledged if text in listed)
        in_page_order = [text for text in dict.fromkeys(record.listed) if text in acknowledged]
        in_sent_order = [text for text in record.acknowledged if text in listed]
        counts["out_of_order"] += in_page_order != in_sent_order
    return Audit(
        sessions=len(sessions),
        unread=counts["unread"],
        sent=counts["sent"],
        acknowledged=counts["acknowledged"],
        lost=counts["lost"],
        duplicated=counts["duplicated"],
        foreign=counts["foreign"],
        out_of_order=counts["out_of_order"],
        stored_unacknowledged=counts["stored_unacknowledged"],
    )
