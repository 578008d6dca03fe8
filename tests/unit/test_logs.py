"""Log lines: one JSON object each, tagged with the request id the response also carries."""

from __future__ import annotations

import json
import logging
import sys

from app.logs import JsonFormatter, RepeatLimit, request_id_from
from localservers.waits import wait_until


def test_well_formed_request_ids_are_kept_others_replaced():
    assert request_id_from("abc-123") == "abc-123"
    replaced = request_id_from('evil"\ninjected')
    assert replaced != 'evil"\ninjected' and len(replaced) == 32
    assert len(request_id_from(None)) == 32
    assert len(request_id_from("x" * 200)) == 32


def test_response_echoes_the_request_id(client):
    response = client.get("/", headers={"X-Request-ID": "trace-42"})
    assert response.headers["X-Request-ID"] == "trace-42"
    generated = client.get("/").headers["X-Request-ID"]
    assert len(generated) == 32


def test_app_log_lines_are_json_with_the_request_id(capsys, make_app):
    client = make_app().test_client()  # made here, so that its log handler writes to capsys
    client.get("/")  # the page's cookies: a refusal of the form itself, not of a cookieless one
    client.post("/persistMessage", data={"message": "x"}, headers={"X-Request-ID": "trace-7"})
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line]
    refused = [line for line in lines if line["message"] == "refused: csrf"]
    assert refused and refused[0]["request_id"] == "trace-7"
    assert refused[0]["level"] == "INFO" and refused[0]["logger"] == "app.refusals"
    assert refused[0]["reason"] == "csrf" and "token" in refused[0]["detail"]


def test_extra_fields_and_exceptions_are_serialised():
    record = logging.LogRecord("app", logging.ERROR, __file__, 1, "boom %s", ("x",), None)
    record.status = 503
    try:
        raise ValueError("bad")
    except ValueError:
        record.exc_info = sys.exc_info()
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "boom x" and line["status"] == 503
    assert "ValueError: bad" in line["exception"]


class Collected(logging.Handler):
    """A handler that keeps what it writes, with the filter the app's handler has."""

    def __init__(self, interval: float) -> None:
        super().__init__()
        self.written: list[logging.LogRecord] = []
        self.addFilter(RepeatLimit(self, interval))

    def emit(self, record: logging.LogRecord) -> None:
        self.written.append(record)


def _record(message: str, line: int = 10, level: int = logging.WARNING) -> logging.LogRecord:
    return logging.LogRecord("app.x", level, "/app/x.py", line, message, None, None)


def test_repeated_lines_are_written_once_a_second_and_every_one_is_counted():
    handler = Collected(interval=0.3)
    for number in range(1000):
        handler.handle(_record(f"failure {number}"))
    # The first at once; the rest held back, and the last of them written when the second
    # (here 0.3 s) is over, with how many more were not.
    assert [r.getMessage() for r in handler.written] == ["failure 0"]
    wait_until(lambda: len(handler.written) == 2, 5, "the held lines' count")
    last = handler.written[1]
    assert last.getMessage() == "failure 999" and last.repeats == 998
    assert not hasattr(handler.written[0], "repeats")
    line = json.loads(JsonFormatter().format(last))
    assert line["repeats"] == 998 and "_released" not in line


def test_kinds_are_limited_apart():
    handler = Collected(interval=0.3)
    for _ in range(3):
        handler.handle(_record("a", line=1))
        handler.handle(_record("b", line=2))
        handler.handle(_record("a as an error", line=1, level=logging.ERROR))
    assert [r.getMessage() for r in handler.written] == ["a", "b", "a as an error"]
    wait_until(lambda: len(handler.written) == 6, 5, "each kind's held lines")
    assert sorted(r.repeats for r in handler.written[3:]) == [1, 1, 1]


def test_a_line_after_a_quiet_second_is_written_at_once_with_what_was_held(monkeypatch):
    """Past the end of a second, the next line of the kind is written at once; if lines were
    still held (their timer not run yet), it carries their count and the timer writes none."""
    clock = [1000.0]
    monkeypatch.setattr("app.logs.time.monotonic", lambda: clock[0])
    handler = Collected(interval=60)  # the timers would fire in a minute: not during this test
    for number in range(5):
        handler.handle(_record(f"held {number}"))
    clock[0] += 61
    handler.handle(_record("next"))
    assert [r.getMessage() for r in handler.written] == ["held 0", "next"]
    assert handler.written[1].repeats == 4
    clock[0] += 61
    handler.handle(_record("alone"))
    assert handler.written[2].getMessage() == "alone" and not hasattr(handler.written[2], "repeats")
