"""Hostile HTTP against a real gunicorn and a real Valkey: malformed framing, bodies past the
cap, bodies that dodge the UTF-8 check. Sent with raw sockets, since HTTP clients refuse to
send most of these.
"""

from __future__ import annotations

import json

import pytest

from .support import raw_exchange, wait_until, worker_pids

# Each is refused by gunicorn's parser, before the app sees it.
MALFORMED = {
    "duplicate Host": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "Content-Length and Transfer-Encoding": (
        b"POST /persistMessage HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    "duplicate Content-Length": (
        b"POST /persistMessage HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n"
        b"Content-Length: 2\r\n\r\nab"
    ),
    "Content-Length: +1": (
        b"POST /persistMessage HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\na"
    ),
    "Transfer-Encoding: chunked, chunked": (
        b"POST /persistMessage HTTP/1.1\r\nHost: a\r\n"
        b"Transfer-Encoding: chunked, chunked\r\n\r\n1\r\na\r\n0\r\n\r\n"
    ),
    "chunked over HTTP/1.0": (
        b"POST /persistMessage HTTP/1.0\r\nHost: a\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n\r\n"
    ),
}


def _lines(log: str) -> list[dict]:
    return [json.loads(line) for line in log.splitlines() if line.strip()]


@pytest.fixture
def replica(valkey, start_replica):
    return start_replica(valkey.port, "hostile", WEB_CONCURRENCY="2")


def test_malformed_requests_get_a_4xx_and_kill_no_worker(replica):
    # /healthz answers as soon as one worker is up; wait for the second.
    wait_until(lambda: len(worker_pids(replica.process.pid)) == 2, 10, "both workers")
    workers = worker_pids(replica.process.pid)
    before = len(replica.log().splitlines())
    for rounds in range(3):  # more requests than workers: a killed worker would show
        for shape, data in MALFORMED.items():
            reply = raw_exchange(replica.port, data)
            status = reply.split(b"\r\n", 1)[0].decode(errors="replace")
            assert status.startswith(("HTTP/1.1 4", "HTTP/1.0 4")), (shape, rounds, reply)
    assert worker_pids(replica.process.pid) == workers
    count = 3 * len(MALFORMED)

    def all_logged() -> bool:
        return len(replica.log().splitlines()) - before >= count

    wait_until(all_logged, 10, "a log line per malformed request")
    log = replica.log()
    assert "Traceback" not in log
    new = _lines("\n".join(log.splitlines()[before:]))  # every line is JSON
    assert len(new) == count, new
    assert all(line["level"] == "WARNING" for line in new), new
    assert all(line["message"].startswith("Invalid request from ip=") for line in new), new
