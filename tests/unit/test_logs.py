"""Log lines: one JSON object each, tagged with the request id the response also carries."""

from __future__ import annotations

import json
import logging
import sys

from app.logs import JsonFormatter, request_id_from


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
