"""The drill's report: plain text, to be pasted into an incident review as it is.

Times are seconds from the start of the load (``+12.3``), with the wall-clock start and end in UTC
at the top, so AWS's own event times (shown on the timeline) line up with the requests.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime

from ops.drill.records import NO_ANSWER, Answer, Audit, Disruption, Run


def format_report(run: Run, result: Audit, window: float = 5.0) -> str:
    sections = [
        _header(run),
        _timeline(run),
        _statuses(run.answers),
        _latency(run, window),
        *(_disruption(run, d) for d in run.disruptions),
        _pods(run),
        _saves(run, result),
        _verdict(run, result),
    ]
    return "\n\n".join(sections) + "\n"


def _utc(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _offset(run: Run, at: float) -> str:
    return f"+{at - run.started:.1f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "  ") -> list[str]:
    """Columns right-aligned but the first, two spaces apart."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        cells = [
            row[0].ljust(widths[0]),
            *(c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)),
        ]
        return (indent + "  ".join(cells)).rstrip()

    return [line(header), *(line(r) for r in rows)]


def _header(run: Run) -> str:
    sessions = sum(1 for s in run.sessions if s.sent)
    return "\n".join(
        [
            f"Drill against {run.url}",
            f"  {_utc(run.started)} to {_utc(run.load_stopped)} "
            f"({run.load_stopped - run.started:.1f} s of load)",
            f"  load: {run.users} users (Locust), {run.rate:g} requests/s planned in all, "
            f"1 in {run.save_every} requests of a user a save; sessions that saved: {sessions}",
        ]
    )


def _timeline(run: Run) -> str:
    marks = [(run.started, "load started")]
    for disruption in run.disruptions:
        marks += [(m.at, f"{disruption.name}: {m.text}") for m in disruption.marks]
        if disruption.error:
            failed_at = disruption.started or run.started
            marks.append((failed_at, f"{disruption.name}: {disruption.error}"))
    marks.append((run.load_stopped, "load stopped"))
    lines = ["Timeline (seconds from the start of the load)"]
    lines += [f"  {_offset(run, at):>7}  {text}" for at, text in sorted(marks, key=lambda m: m[0])]
    return "\n".join(lines)


def _status_name(status: int) -> str:
    return "no answer" if status == NO_ANSWER else str(status)


def _statuses(answers: list[Answer]) -> str:
    statuses = sorted({a.status for a in answers}, key=lambda s: (s == NO_ANSWER, s))
    header = ["requests", "total", *map(_status_name, statuses)]
    rows = []
    for kind in ("page", "save", "all"):
        chosen = [a for a in answers if kind in ("all", a.kind)]
        counts = Counter(a.status for a in chosen)
        rows.append([kind, str(len(chosen)), *(str(counts[s]) for s in statuses)])
    return "\n".join(["Requests by status", *_table(header, rows)])


def _percentiles(milliseconds: list[float]) -> tuple[float, float]:
    if len(milliseconds) == 1:
        return milliseconds[0], milliseconds[0]
    cuts = statistics.quantiles(milliseconds, n=100, method="inclusive")
    return cuts[49], cuts[98]


def _latency(run: Run, window: float) -> str:
    buckets: dict[int, list[Answer]] = {}
    for answer in run.answers:
        buckets.setdefault(int((answer.started - run.started) // window), []).append(answer)
    rows = []
    for index in range(max(buckets, default=-1) + 1):
        answers = buckets.get(index, [])
        start = run.started + index * window
        during = [
            d.name
            for d in run.disruptions
            if d.started is not None
            and d.started < start + window
            and (d.ended or run.load_stopped) >= start
        ]
        answered = [a.milliseconds for a in answers if a.status != NO_ANSWER]
        p50, p99 = _percentiles(answered) if answered else (float("nan"), float("nan"))
        rows.append(
            [
                f"+{index * window:.0f}",
                str(len(answers)),
                str(sum(a.failed for a in answers)),
                "-" if not answered else f"{p50:.0f}",
                "-" if not answered else f"{p99:.0f}",
                ", ".join(during),
            ]
        )
    header = ["from (s)", "requests", "failed", "p50 ms", "p99 ms", "during"]
    title = f"Latency per {window:g} s (answered requests; failed: 5xx or no answer)"
    return "\n".join([title, *_table(header, rows)])


def _disruption(run: Run, disruption: Disruption) -> str:
    """The failed requests from the disruption's start until the next one starts (or the load
    stops): the window users saw errors in."""
    lines = [f"{disruption.name.capitalize()}: {disruption.description}"]
    if disruption.started is None:
        return "\n".join([*lines, f"  not started: {disruption.error}"])
    later = [d.started for d in run.disruptions if d.started and d.started > disruption.started]
    until = min(later, default=run.load_stopped)
    if disruption.ended is not None:
        lines.append(
            f"  set off at {_offset(run, disruption.started)} s, reported complete at "
            f"{_offset(run, disruption.ended)} s ({disruption.ended - disruption.started:.1f} s)"
        )
    else:
        started = _offset(run, disruption.started)
        lines.append(f"  set off at {started} s, NOT COMPLETE: {disruption.error}")
    answers = [a for a in run.answers if disruption.started <= a.started < until]
    failed = [a for a in answers if a.failed]
    if not failed:
        lines.append(f"  no failed request ({len(answers)} requests until {_offset(run, until)} s)")
        return "\n".join(lines)
    first = min(a.started for a in failed)
    last = max(a.started + a.milliseconds / 1000 for a in failed)
    kinds = Counter(_status_name(a.status) for a in failed)
    lines.append(
        f"  failed requests: {len(failed)} of {len(answers)} "
        f"({', '.join(f'{k}: {n}' for k, n in sorted(kinds.items()))})"
    )
    lines.append(
        f"  error window: first failed request sent at {_offset(run, first)} s, last answered at "
        f"{_offset(run, last)} s: {last - first:.1f} s"
    )
    return "\n".join(lines)


def _pods(run: Run) -> str:
    seen: dict[str, list[float]] = {}
    for answer in run.answers:
        if answer.served_by:
            seen.setdefault(answer.served_by, []).append(answer.started)
    rows = [
        [pod, str(len(times)), _offset(run, min(times)), _offset(run, max(times))]
        for pod, times in sorted(seen.items(), key=lambda item: min(item[1]))
    ]
    unnamed = sum(1 for a in run.answers if a.status != NO_ANSWER and not a.served_by)
    lines = ["Pods that served (X-Served-By)", *_table(["pod", "requests", "first", "last"], rows)]
    if unnamed:
        lines.append(f"  answers without X-Served-By (from a proxy or load balancer): {unnamed}")
    return "\n".join(lines)


def _saves(run: Run, result: Audit) -> str:
    requests = sum(1 for a in run.answers if a.kind == "save")
    return "\n".join(
        [
            "Saves, checked on each session's page after the load",
            f"  sessions: {result.sessions}, pages not readable: {result.unread}",
            f"  sent: {result.sent} ({requests - result.sent} sent again after an error), "
            f"acknowledged (303): {result.acknowledged}",
            f"  acknowledged saves lost: {result.lost}, duplicated: {result.duplicated}",
            f"  messages of no save of the session: {result.foreign}, "
            f"sessions listing saves out of order: {result.out_of_order}",
            f"  saves answered with an error but stored once (allowed): "
            f"{result.stored_unacknowledged}",
        ]
    )


def _verdict(run: Run, result: Audit) -> str:
    problems = []
    if result.acknowledged == 0:
        problems.append("no save was acknowledged: the drill proved nothing")
    if result.unread:
        problems.append(f"{result.unread} session pages could not be read afterwards")
    for name, count in (
        ("acknowledged saves lost", result.lost),
        ("messages duplicated", result.duplicated),
        ("messages of another session", result.foreign),
        ("sessions out of order", result.out_of_order),
    ):
        if count:
            problems.append(f"{count} {name}")
    problems += [f"{d.name} did not complete" for d in run.disruptions if not d.completed]
    if problems:
        return "FAIL: " + "; ".join(problems)
    return "PASS: every acknowledged save is listed once, in order, and every disruption completed"
