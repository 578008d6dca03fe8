"""One pod as deployed: nginx (the repo's nginx.conf) in front of gunicorn's workers, a real
Valkey behind. Slow clients: without nginx, two clients sending a request slowly hold both
workers and /healthz stops answering; with it, hundreds cost nothing but connection slots and
are closed by nginx's timeouts. Error pages nginx or gunicorn make themselves get the app's
security headers.
"""

from __future__ import annotations

import selectors
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from localservers.nginx import Nginx
from tests.support import csrf_token, raw_exchange

from .test_hostile_http import MALFORMED

SLOW_HEADERS = 200
SLOW_BODIES = 50
TRICKLE_INTERVAL = 1.0  # one byte per connection per second
TRICKLE_SECONDS = 16.0  # longer than client_header_timeout (10 s): nginx must cut them off
CLOSE_WAIT = 30.0  # bound on waiting for nginx to close the rest


@pytest.fixture
def pod(valkey, start_replica, tmp_path: Path) -> Iterator[tuple[Nginx, object]]:
    replica = start_replica(valkey.port, "slow-pod", WEB_CONCURRENCY="2")
    proxy = Nginx(replica.port, tmp_path / "nginx.log")
    proxy.start()
    try:
        yield proxy, replica
    finally:
        proxy.stop()


@dataclass
class Slow:
    sock: socket.socket
    kind: str
    opened: float
    closed: float | None = None


@dataclass
class Probes:
    samples: list[tuple[str, int, float]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)


def _open_slow(port: int, kind: str, cookie: str) -> Slow:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    if kind == "headers":
        sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
    else:
        sock.sendall(
            b"POST /persistMessage HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            + f"Cookie: {cookie}\r\nContent-Length: 10000\r\n\r\nmessage=".encode()
        )
    sock.setblocking(False)
    return Slow(sock, kind, time.monotonic())


def _probe(base: str, browser: requests.Session, probes: Probes) -> None:
    while not probes.stop.is_set():
        for path in ("/healthz", "/"):
            started = time.monotonic()
            try:
                status = browser.get(base + path, timeout=10).status_code
            except requests.RequestException:
                status = 0
            probes.samples.append((path, status, time.monotonic() - started))
        time.sleep(0.05)


def _watch(slow: list[Slow], until: float, trickle: bool) -> None:
    """Send one byte per interval on every open connection (if trickling) and note when nginx
    closes each one (EOF, a reset, or a 408 followed by EOF)."""
    selector = selectors.DefaultSelector()
    for conn in slow:
        if conn.closed is None:
            selector.register(conn.sock, selectors.EVENT_READ, conn)
    next_send = time.monotonic()
    while time.monotonic() < until and any(c.closed is None for c in slow):
        for key, _ in selector.select(timeout=0.1):
            conn = key.data
            try:
                data = conn.sock.recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data or b"408" in data:
                conn.closed = time.monotonic()
                selector.unregister(conn.sock)
        if trickle and time.monotonic() >= next_send:
            next_send += TRICKLE_INTERVAL
            for conn in slow:
                if conn.closed is None:
                    try:
                        conn.sock.send(b"a")
                    except OSError:
                        conn.closed = time.monotonic()
                        selector.unregister(conn.sock)
    selector.close()


def test_slow_clients_do_not_take_the_pod_down_and_are_cut_off(pod) -> None:
    proxy, _ = pod
    browser = requests.Session()
    token = csrf_token(browser.get(f"{proxy.url}/", timeout=10).text)
    saved = browser.post(
        f"{proxy.url}/persistMessage",
        data={"message": "kept", "csrf_token": token},
        timeout=10,
    )
    assert saved.status_code == 200 and "kept" in saved.text  # 303 followed to the page
    cookie = "; ".join(f"{k}={v}" for k, v in browser.cookies.get_dict().items())

    slow = [_open_slow(proxy.port, "headers", cookie) for _ in range(SLOW_HEADERS)]
    slow += [_open_slow(proxy.port, "body", cookie) for _ in range(SLOW_BODIES)]
    probes = Probes()
    prober = threading.Thread(target=_probe, args=(proxy.url, browser, probes))
    prober.start()
    try:
        # Phase 1: every connection keeps sending, a byte a second. Slow headers never finish
        # within client_header_timeout, so nginx closes them while they are still sending.
        _watch(slow, time.monotonic() + TRICKLE_SECONDS, trickle=True)
        # Phase 2: the slow bodies stall; client_body_timeout closes them.
        stalled = time.monotonic()
        _watch(slow, stalled + CLOSE_WAIT, trickle=False)
    finally:
        probes.stop.set()
        prober.join(30)
        for conn in slow:
            conn.sock.close()

    headers = [c for c in slow if c.kind == "headers"]
    bodies = [c for c in slow if c.kind == "body"]
    assert all(c.closed is not None for c in slow), "nginx left slow connections open"
    # Cut off while still sending: the header timeout, not the client stopping.
    assert all(c.closed < stalled for c in headers)
    # Kept while sending (under client_body_timeout between bytes), cut off once stalled.
    assert all(c.closed >= stalled for c in bodies)
    assert not any(status != 200 for _, status, _ in probes.samples), [
        s for s in probes.samples if s[1] != 200
    ]
    latencies = [seconds for _, _, seconds in probes.samples]
    within = sum(s <= 1.0 for s in latencies) / len(latencies)
    header_close = statistics.median(c.closed - c.opened for c in headers)
    body_close = statistics.median(c.closed - stalled for c in bodies)
    print(
        f"\nslow clients: {SLOW_HEADERS} slow-header + {SLOW_BODIES} slow-body connections; "
        f"{len(latencies)} probes of /healthz and / all 200, {within:.1%} within 1 s, "
        f"p50 {statistics.median(latencies) * 1000:.1f} ms, max {max(latencies) * 1000:.0f} ms; "
        f"slow headers closed after {header_close:.1f} s (median), stalled bodies "
        f"{body_close:.1f} s after their last byte"
    )


SECURITY_HEADERS = ("X-Content-Type-Options", "Content-Security-Policy", "Referrer-Policy")


def _head(reply: bytes) -> tuple[int, list[tuple[str, str]]]:
    lines = reply.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    fields = [tuple(part.strip() for part in line.split(":", 1)) for line in lines[1:]]
    return int(lines[0].split()[1]), fields  # type: ignore[return-value]


def test_every_answer_carries_the_security_headers_once(pod) -> None:
    proxy, replica = pod
    long_uri = b"/?" + b"a" * 5000  # past gunicorn's 4094-byte request line, within nginx's
    answers = {
        "the app's page": b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        "gunicorn's own 414 page": b"GET "
        + long_uri
        + b" HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        "nginx's own 400 page": b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"b" * 9000 + b"\r\n\r\n",
        **{f"malformed: {shape}": data for shape, data in MALFORMED.items()},
    }
    statuses = {}
    for name, data in answers.items():
        status, fields = _head(raw_exchange(proxy.port, data))
        statuses[name] = status
        names = [field[0].lower() for field in fields]
        for header in SECURITY_HEADERS:
            assert names.count(header.lower()) == 1, (name, header, fields)
    assert statuses["the app's page"] == 200
    assert statuses["gunicorn's own 414 page"] == 414
    # 400 (or 414) for everything refused; nginx answers 501 to a transfer coding it does not
    # implement ("chunked, chunked"), as RFC 9112 asks.
    refused = {name: status for name, status in statuses.items() if name != "the app's page"}
    assert all(400 <= status < 500 or status == 501 for status in refused.values()), statuses
    # The same long request line straight to gunicorn: its page has none of them (no hook).
    status, fields = _head(raw_exchange(replica.port, answers["gunicorn's own 414 page"]))
    assert status == 414 and not {f[0] for f in fields} & set(SECURITY_HEADERS)


def test_the_load_balancers_scheme_reaches_the_app(pod) -> None:
    """X-Forwarded-Proto from a private address (here loopback) passes nginx to gunicorn, which
    believes its one peer: the app sees HTTPS and sends HSTS. Without the header, nginx states
    the scheme it saw itself (http)."""
    proxy, _ = pod
    https = requests.get(f"{proxy.url}/", headers={"X-Forwarded-Proto": "https"}, timeout=10)
    assert https.headers["Strict-Transport-Security"] == "max-age=31536000"
    plain = requests.get(f"{proxy.url}/", timeout=10)
    assert "Strict-Transport-Security" not in plain.headers
