"""Hostile HTTP against a real gunicorn and a real Valkey: malformed framing, bodies past the
cap, bodies that dodge the UTF-8 check. Sent with raw sockets, since HTTP clients refuse to
send most of these.
"""

from __future__ import annotations

import json
import secrets

import pytest
import requests

from localservers.processes import child_pids
from localservers.waits import wait_until
from tests.support import command_calls, csrf_token, listed_messages, raw_exchange, session_keys

# Settings.max_content_length with the default message length.
CAP = 2000 * 12 + 4096
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
    wait_until(lambda: len(child_pids(replica.process.pid)) == 2, 10, "both workers")
    workers = child_pids(replica.process.pid)
    before = len(replica.log().splitlines())
    for rounds in range(3):  # more requests than workers: a killed worker would show
        for shape, data in MALFORMED.items():
            reply = raw_exchange(replica.port, data)
            status = reply.split(b"\r\n", 1)[0].decode(errors="replace")
            assert status.startswith(("HTTP/1.1 4", "HTTP/1.0 4")), (shape, rounds, reply)
    assert child_pids(replica.process.pid) == workers
    count = 3 * len(MALFORMED)

    def new_lines() -> list[dict]:
        """Every complete line since `before`, each parsed as JSON."""
        text = replica.log()
        return _lines("\n".join(text[: text.rfind("\n") + 1].splitlines()[before:]))

    def refusals() -> list[dict]:
        return [line for line in new_lines() if line["message"].startswith("Invalid request")]

    wait_until(lambda: len(refusals()) >= count, 10, "a log line per malformed request")
    assert len(refusals()) == count
    assert all(line["level"] == "WARNING" for line in refusals())
    # And no second line for them (the readiness poll's 200 may land after `before`).
    assert not [line for line in new_lines() if line.get("status", 200) >= 400]
    log = replica.log()
    assert "Traceback" not in log and "status_code" not in log


def chunked_body(body: bytes, size: int = 4096) -> bytes:
    pieces = [body[i : i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


def _chunked_save(port: int, cookies: dict[str, str], body: bytes) -> bytes:
    cookie = "; ".join(f"{k}={v}" for k, v in cookies.items())
    return raw_exchange(
        port,
        b"POST /persistMessage HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n"
        + f"Cookie: {cookie}\r\n".encode()
        + b"Transfer-Encoding: chunked\r\n\r\n"
        + chunked_body(body),
    )


def test_a_chunked_body_over_the_cap_answers_413_and_stores_nothing(replica):
    browser = requests.Session()
    token = csrf_token(browser.get(f"{replica.url}/", timeout=10).text)
    first = {"message": "first", "csrf_token": token}  # the first save sets the session cookie
    assert browser.post(f"{replica.url}/persistMessage", data=first, timeout=10).ok
    cookies = browser.cookies.get_dict()
    # Under the cap, chunked framing is fine.
    small = f"csrf_token={token}&message=chunked".encode()
    assert _chunked_save(replica.port, cookies, small).startswith(b"HTTP/1.1 303")
    # The message comes first and is short; only the padding after it is over the cap, so a
    # body cut at the cap would still hold a complete, valid message.
    big = f"csrf_token={token}&message=cut&pad=".encode() + b"x" * CAP
    reply = _chunked_save(replica.port, cookies, big)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    # A body of exactly the cap is still read whole.
    exact = f"csrf_token={token}&message=exact&pad=".encode()
    exact += b"x" * (CAP - len(exact))
    assert _chunked_save(replica.port, cookies, exact).startswith(b"HTTP/1.1 303")
    page = browser.get(f"{replica.url}/", timeout=10).text
    assert listed_messages(page) == ["first", "chunked", "exact"]


@pytest.mark.parametrize(
    "cookie",
    [b"session=\xe9\xe9\xe9", b"csrf=\xff; session=" + b"a" * 43, b"session=\xc3\xa9"],
    ids=["latin-1 bytes", "invalid UTF-8 in another cookie", "UTF-8 bytes"],
)
def test_a_cookie_header_that_is_not_utf8_gets_a_page_not_a_500(replica, cookie):
    """Bytes past ASCII in a Cookie header (a broken client, or anyone with curl) reach the app
    as latin-1 text: a page for a new visitor, as with any cookie naming no session, never a
    500 with a traceback in the log."""
    for path, body in ((b"GET / HTTP/1.1", b""), (b"POST /persistMessage HTTP/1.1", b"x=1")):
        request = (
            path + b"\r\nHost: a\r\nConnection: close\r\nCookie: " + cookie + b"\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body
        )
        status = raw_exchange(replica.port, request).split(b"\r\n", 1)[0]
        assert status in (b"HTTP/1.1 200 OK", b"HTTP/1.1 400 BAD REQUEST"), (path, status)
    assert "Traceback" not in replica.log()


@pytest.mark.parametrize(
    "chunks",
    [
        b"zz\r\na=b\r\n0\r\n\r\n",
        b"3\r\na=bXXXX\r\n0\r\n\r\n",
        # Framed well up to the cap, then not: the byte read past the cap meets the error.
        chunked_body(b"a=" + b"x" * (CAP - 2))[:-5] + b"zz\r\nxx\r\n0\r\n\r\n",
    ],
    ids=["chunk size not hex", "chunk without its CRLF", "bad chunk right after the cap"],
)
def test_a_malformed_chunked_body_gets_400_not_500(replica, chunks):
    """gunicorn parses a chunked body only as the app reads it, so its framing errors surface
    in the app (python -m app, and the image run alone, have no nginx in front to catch them)."""
    reply = raw_exchange(
        replica.port,
        b"POST /persistMessage HTTP/1.1\r\nHost: a\r\nConnection: close\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + chunks,
    )
    assert reply.startswith(b"HTTP/1.1 400"), reply[:200]
    assert "Traceback" not in replica.log()


def test_made_up_session_ids_cost_redis_no_memory(valkey, start_replica):
    """Page views with made-up session cookies. Before, each id was read on the worker's
    tracking connection, and Valkey remembers every key a tracking connection read, one that
    does not exist too: 150 such page views added 150 keys to its tracking table, memory
    counted in used_memory, so that under memory pressure Redis evicted real sessions to make
    room (found by review). Now a key is read tracked only once the worker has found it stored;
    a real session is still cached from its second read on."""
    url = start_replica(valkey.port, "made-up-ids", WEB_CONCURRENCY="1").url
    browser = requests.Session()
    page = browser.get(f"{url}/", timeout=10).text
    post = {"message": "mine", "csrf_token": csrf_token(page)}
    assert browser.post(f"{url}/persistMessage", data=post, timeout=10).status_code == 200

    def tracked() -> int:
        return int(valkey.client().info("stats")["tracking_total_keys"])

    before = tracked()
    assert before == 1  # the real session, which the worker saved
    for _ in range(150):
        cookie = secrets.token_urlsafe(32)
        answer = requests.get(f"{url}/", cookies={"session": cookie}, timeout=10)
        assert answer.status_code == 200
        assert listed_messages(answer.text) == []
    assert tracked() == before
    hgetall = command_calls(valkey.client(), "hgetall")
    for _ in range(3):
        assert listed_messages(browser.get(f"{url}/", timeout=10).text) == ["mine"]
    assert command_calls(valkey.client(), "hgetall") == hgetall  # cached: no read at all


def test_saves_with_made_up_session_ids_cost_redis_no_memory(valkey, start_replica):
    """Saves with made-up session cookies, most of them refused at the rate limit. Before, the
    save script read each made-up key on the tracking connection (and at the limit, the lookup
    of whether the form was stored already did): one tracking entry each, the rate limit
    bounding nothing (found by review). Now only the sessions saves create are tracked."""
    url = start_replica(
        valkey.port, "made-up-saves", WEB_CONCURRENCY="1", RATE_LIMIT_SAVES="3/minute"
    ).url
    browser = requests.Session()
    token = csrf_token(browser.get(f"{url}/", timeout=10).text)
    csrf = browser.cookies.get("csrf")
    admin = valkey.client()
    before = int(admin.info("stats")["tracking_total_keys"])
    statuses = []
    for _ in range(150):
        cookies = {"session": secrets.token_urlsafe(32), "csrf": csrf}
        post = {"message": "x", "csrf_token": token}
        answer = requests.post(
            f"{url}/persistMessage", data=post, cookies=cookies, allow_redirects=False, timeout=10
        )
        statuses.append(answer.status_code)
    assert set(statuses) == {303, 429}
    created = len(session_keys(admin))
    assert created == statuses.count(303)
    assert int(admin.info("stats")["tracking_total_keys"]) == before + created
