"""One pod as deployed: nginx (the repo's nginx.conf) in front of gunicorn's workers, a real
Valkey behind. Slow clients: without nginx, two clients sending a request slowly hold both
workers and /healthz stops answering; with it, hundreds cost nothing but connection slots and
are closed by nginx's timeouts. Error pages nginx or gunicorn make themselves get the app's
security headers.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import selectors
import signal
import socket
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import requests

from localservers.nginx import Nginx
from localservers.waits import wait_until
from tests.support import (
    NGINX_CONNECTION_OVERHEAD,
    REPO_ROOT,
    csrf_token,
    listed_messages,
    raw_exchange,
)

from .test_hostile_http import MALFORMED, chunked_body

SLOW_HEADERS = 200
SLOW_BODIES = 50
TRICKLE_INTERVAL = 1.0  # one byte per connection per second
# Longer than client_header_timeout (10 s), so nginx must cut the slow headers off while they
# still send, and than client_body_timeout (10 s), so a body sending all along outlives it (the
# timeout is between bytes, not for the whole body); 3 s past both is margin enough for the
# 250 connections opened at the start.
TRICKLE_SECONDS = 13.0
CLOSE_WAIT = 30.0  # bound on waiting for nginx to close the rest


@pytest.fixture
def start_pod(valkey, start_replica, tmp_path: Path) -> Iterator[Callable[..., tuple[Nginx, Any]]]:
    """Start one pod: gunicorn and nginx in front of it, both given the settings ``env``."""
    proxies: list[Nginx] = []

    def start(**env: str) -> tuple[Nginx, Any]:
        replica = start_replica(valkey.port, "pod", WEB_CONCURRENCY="2", **env)
        proxy = Nginx(replica.port, tmp_path / f"nginx-{len(proxies)}.log", env)
        proxies.append(proxy)
        proxy.start()
        return proxy, replica

    yield start
    for proxy in proxies:
        proxy.stop()


@pytest.fixture
def pod(start_pod) -> tuple[Nginx, Any]:
    return start_pod()


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


def _open_slow(port: int, kind: str, cookie: str, number: int) -> Slow:
    # Each from an address of its own (all of 127/8 is this host): many clients, as one
    # address may hold only so many requests (limit_conn), which the probes' address shares.
    source = f"127.0.{1 + number // 250}.{1 + number % 250}"
    sock = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))
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

    slow = [_open_slow(proxy.port, "headers", cookie, n) for n in range(SLOW_HEADERS)]
    slow += [_open_slow(proxy.port, "body", cookie, SLOW_HEADERS + n) for n in range(SLOW_BODIES)]
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


def test_a_busy_client_connection_is_closed_within_the_pre_stop(pod) -> None:
    """A browser in use keeps its connection, and the NLB keeps a draining pod's connections:
    nginx ends each one after 10 s (keepalive_time), answering the request under way with
    Connection: close, so clients reconnect (to another pod) well within the 40 s preStop
    instead of meeting this pod's 502s once gunicorn has stopped (found by review: 52-156
    502s per rollout for 20 clients kept on the pod)."""
    proxy, _ = pod
    request = b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n"
    statuses, closed = [], False
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as conn:
        deadline = time.monotonic() + 30  # keepalive_time 10 s, and margin
        reader = conn.makefile("rb")
        while not closed and time.monotonic() < deadline:
            conn.sendall(request)
            status = int(reader.readline().split()[1])
            headers = {}
            while (line := reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            reader.read(int(headers["content-length"]))
            statuses.append(status)
            closed = headers.get("connection") == "close"
            time.sleep(0.5)  # a user's pace; the idle timeout (20 s) never ends it
        assert closed, f"still open after {len(statuses)} requests"
        assert reader.read() == b""  # and nginx closed it
    assert set(statuses) == {200}
    assert len(statuses) >= 10  # not closed for anything but its age


def test_an_idle_client_connection_is_closed_after_its_setting(start_pod) -> None:
    """A browser whose user reads for a while keeps its idle connection: nginx closes it after
    PROXY_KEEPALIVE_SECONDS (20 s behind the NLB), so that, on a draining pod, the next save
    goes over a new connection (to another pod) instead of meeting this pod's 502 once its
    gunicorn has stopped (found by review: 75 s for every load balancer, the preStop 40 s).
    Here 2 s, so that the test is short."""
    proxy, _ = start_pod(PROXY_KEEPALIVE_SECONDS="2")
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=15) as conn:
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
        reader = conn.makefile("rb")
        assert int(reader.readline().split()[1]) == 200
        length = 0
        while (line := reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            length = int(value) if name.strip().lower() == "content-length" else length
        reader.read(length)
        # Closed by nginx: end of stream well before the socket's 15 s timeout (which raises).
        assert reader.read() == b""


def test_a_gunicorn_that_is_gone_gets_a_page_saying_what_to_do(start_pod) -> None:
    """gunicorn stopped (the end of a rollout, a restart): nginx's 502 is worded like the app's
    pages, says the request may not have been carried out and how to find out, and carries
    Retry-After and the security headers, instead of nginx's bare page."""
    proxy, replica = start_pod()
    replica.stop()
    for data in (
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        b"POST /persistMessage HTTP/1.1\r\nHost: a\r\nConnection: close\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 9\r\n\r\nmessage=x",
    ):
        reply = raw_exchange(proxy.port, data)
        status, fields = _head(reply)
        assert status == 502
        names = [name.lower() for name, _ in fields]
        for header in (*SECURITY_HEADERS, "Retry-After"):
            assert names.count(header.lower()) == 1, (header, fields)
        assert dict(fields)["Retry-After"] == "5"
        body = reply.split(b"\r\n\r\n", 1)[1].decode()
        assert "may not have been carried out" in body and "nginx" not in body


def _nginx_lines(proxy: Nginx) -> list[dict[str, Any]]:
    """nginx's own access lines (JSON, logger nginx) in its log so far."""
    lines = [json.loads(x) for x in proxy.log_path.read_text().splitlines() if x.startswith("{")]
    return [line for line in lines if line["logger"] == "nginx"]


def test_nginx_logs_each_request_it_answers_itself_and_no_other(start_pod) -> None:
    """The access-log metrics (cfn/edge.yaml) count gunicorn's lines and nginx's: nginx writes one
    for a request it refused or could not pass on (its 502 once gunicorn is gone: missed while
    the log's condition was an empty upstream status, found by review), and none for a request
    gunicorn answered and logged itself."""
    proxy, replica = start_pod()
    assert requests.get(f"{proxy.url}/", timeout=10).status_code == 200
    assert _exchange(proxy.port, _post_head(1_000_000, extra="Connection: close\r\n"))[0] == 413
    replica.stop()
    gone = raw_exchange(proxy.port, b"GET /gone HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert _head(gone)[0] == 502
    logged = [(line["status"], line["method"], line["path"]) for line in _nginx_lines(proxy)]
    assert logged == [(413, "POST", "/persistMessage"), (502, "GET", "/gone")]


@contextlib.contextmanager
def _frozen(replica: Any) -> Iterator[None]:
    """gunicorn's master and workers stopped (SIGSTOP) for the block: the kernel still accepts
    connections to it, and nothing answers them until the block ends."""
    pids = [replica.process.pid, *replica.worker_pids()]
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


def test_the_apps_own_503_reaches_the_client_as_the_app_made_it(valkey, start_pod) -> None:
    """nginx adds Retry-After to the pages it makes itself, never to the app's: Redis out of
    memory is a 503 without one, since trying again soon will not help (found by review: nginx
    added `Retry-After: 5` to every 503 gunicorn sent without it)."""
    proxy, _ = start_pod()
    browser = requests.Session()
    token = csrf_token(browser.get(f"{proxy.url}/", timeout=10).text)
    client = valkey.client()
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", "1")  # below what it holds: every write is refused
    try:
        full = browser.post(
            f"{proxy.url}/persistMessage",
            data={"message": "one more", "csrf_token": token},
            allow_redirects=False,
            timeout=10,
        )
    finally:
        client.config_set("maxmemory", "0")
    assert full.status_code == 503 and "full" in full.text
    assert "Retry-After" not in full.headers


def test_a_client_that_left_while_gunicorn_worked_is_logged_once(start_pod) -> None:
    """A client gone before its answer came (nginx's 499) is in gunicorn's log, which answered
    it, and not in nginx's as well: the access-log metrics (cfn/edge.yaml) count it once."""
    proxy, replica = start_pod()
    with _frozen(replica):
        with _connect(proxy.port) as conn:
            conn.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nX-Request-ID: client-that-left\r\n\r\n")
            wait_until(lambda: _unread(replica.port) > 0, 15, "nginx to pass the request on")
        # nginx has seen the client leave once it has closed its side of the request's
        # connection to gunicorn (no longer ESTABLISHED): its 499 is decided before any answer.
        wait_until(lambda: _unread(replica.port) == 0, 15, "nginx to see the client leave")
    # gunicorn goes on and answers nobody.
    wait_until(lambda: "client-that-left" in replica.log(), 30, "gunicorn to log the request")
    assert requests.get(f"{proxy.url}/healthz", timeout=10).status_code == 200
    logged = [json.loads(x) for x in replica.log().splitlines() if "client-that-left" in x]
    assert [(line["logger"], line["path"]) for line in logged] == [("gunicorn.access", "/")]
    assert _nginx_lines(proxy) == []


def test_the_load_balancers_scheme_reaches_the_app(pod) -> None:
    """X-Forwarded-Proto from a private address (here loopback) passes nginx to gunicorn, which
    believes its one peer: the app sees HTTPS and sends HSTS. Without the header, nginx states
    the scheme it saw itself (http)."""
    proxy, _ = pod
    https = requests.get(f"{proxy.url}/", headers={"X-Forwarded-Proto": "https"}, timeout=10)
    assert https.headers["Strict-Transport-Security"] == "max-age=31536000"
    plain = requests.get(f"{proxy.url}/", timeout=10)
    assert "Strict-Transport-Security" not in plain.headers
    # Headers other proxies use for the scheme are not believed, nor do they contradict the
    # one nginx sets (gunicorn's default answered these 400, /healthz too; found by review).
    for header, value in (("X-Forwarded-Ssl", "on"), ("X-Forwarded-Protocol", "ssl")):
        for path in ("/", "/healthz"):
            answer = requests.get(f"{proxy.url}{path}", headers={header: value}, timeout=10)
            assert answer.status_code == 200, (header, path, answer.text[:200])
            assert "Strict-Transport-Security" not in answer.headers


def test_nginxs_own_pages_carry_hsts_where_the_apps_do(start_pod) -> None:
    """HSTS on the pages nginx makes itself (413 here) exactly where the app sends it: with
    SESSION_COOKIE_SECURE, and for a request that arrived over HTTPS. Before (found by review)
    nginx's pages never carried it; the app's page still carries it once."""
    big = _post_head(1_000_000, extra="Connection: close\r\n")

    def hsts(proxy: Nginx, data: bytes) -> list[str]:
        status, fields = _head(_reply(proxy.port, data))
        assert status in (200, 413), status
        return [v for k, v in fields if k.lower() == "strict-transport-security"]

    secure, _ = start_pod(SESSION_COOKIE_SECURE="true")
    page = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    assert hsts(secure, big) == ["max-age=31536000"]
    assert hsts(secure, page) == ["max-age=31536000"]

    plain, _ = start_pod()
    assert hsts(plain, big) == []
    https = b"X-Forwarded-Proto: https\r\n"
    assert hsts(plain, big.replace(b"\r\n", b"\r\n" + https, 1)) == ["max-age=31536000"]
    assert hsts(plain, page.replace(b"\r\n", b"\r\n" + https, 1)) == ["max-age=31536000"]


# --- Bodies and connection limits -----------------------------------------------------------

DECLARED = 2_000_000  # what each attacking connection claims to send
ATTACKERS = 40
AT_CAP = 10  # connections sending a body of exactly the cap: buffered in memory, then served


def _post_head(length: int, cookie: str = "", extra: str = "") -> bytes:
    return (
        "POST /persistMessage HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        f"Cookie: {cookie}\r\n{extra}Content-Length: {length}\r\n\r\n"
    ).encode()


def _connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))


def _status_lines(socks: list[socket.socket], within: float) -> list[int | None]:
    """The status code each connection has been answered with ``within`` seconds (None: none
    yet), reading without sending anything more."""
    found: list[int | None] = [None] * len(socks)
    selector = selectors.DefaultSelector()
    for index, sock in enumerate(socks):
        selector.register(sock, selectors.EVENT_READ, index)
    deadline = time.monotonic() + within
    while None in found and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=max(0.0, deadline - time.monotonic())):
            selector.unregister(key.fileobj)
            try:
                head = key.fileobj.recv(64)  # type: ignore[union-attr]
            except OSError:
                head = b""
            found[key.data] = int(head.split()[1]) if head.startswith(b"HTTP/") else 0
    selector.close()
    return found


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    """Send what the server still takes: after refusing, nginx may close or stop reading."""
    with contextlib.suppress(OSError):
        sock.sendall(data)


def _receive_queues(port: int) -> list[int]:
    """For each of ``port``'s connections, the bytes that arrived and that the server has not
    read yet (the receive queues in /proc/net/tcp)."""
    queues = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == "01":  # 01: ESTABLISHED
            queues.append(int(fields[4].split(":")[1], 16))
    return queues


def _unread(port: int) -> int:
    """Bytes that arrived on ``port``'s connections and that the server has not read yet."""
    return sum(_receive_queues(port))


def _body_files(proxy: Nginx) -> list[str]:
    """Request bodies nginx keeps on disk: open files of its workers that are deleted or in its
    body temp directory, and whatever that directory holds."""
    assert proxy.workdir is not None
    temp = proxy.workdir / "body"
    held = []
    for pid in proxy.worker_pids():
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.endswith("(deleted)") or target.startswith(str(temp)):
                    held.append(f"{pid}: {target}")
    if temp.exists():
        held += [str(path) for path in temp.rglob("*") if path.is_file()]
    return held


def test_no_body_is_parked_on_disk_and_oversized_ones_are_refused_at_once(pod, settings) -> None:
    proxy, _ = pod
    cap = settings.max_content_length  # the app's own cap, with the pod's MESSAGE_MAX_LENGTH
    browser = requests.Session()
    token = csrf_token(browser.get(f"{proxy.url}/", timeout=10).text)
    first = {"message": "first", "csrf_token": token}  # the first save sets the session cookie
    assert browser.post(f"{proxy.url}/persistMessage", data=first, timeout=10).ok
    cookie = "; ".join(f"{k}={v}" for k, v in browser.cookies.get_dict().items())

    # The attack: each connection declares 2 MB and sends all of it but the last byte.
    attackers = [_connect(proxy.port) for _ in range(ATTACKERS)]
    for sock in attackers:
        sock.sendall(_post_head(DECLARED, cookie))
    # Answered from the header alone, before any body byte: nothing to wait for.
    answered_at_once = _status_lines(attackers, within=5.0)
    with ThreadPoolExecutor(ATTACKERS) as senders:
        list(senders.map(lambda s: _send_quietly(s, b"m" * (DECLARED - 1)), attackers))

    # Beside them, forms of exactly the cap, also held one byte short of complete.
    forms = []
    for number in range(AT_CAP):
        body = f"csrf_token={token}&save_id=at-cap-save-{number:04d}&message=at+cap+{number}&pad="
        forms.append((body + "x" * (cap - len(body))).encode())
    held = [_connect(proxy.port) for _ in forms]
    for sock, body in zip(held, forms, strict=True):
        sock.sendall(_post_head(len(body), cookie) + body[:-1])
    try:
        # Whatever nginx keeps of them, once it has read every byte sent.
        wait_until(lambda: _unread(proxy.port) == 0, 15, "nginx to read what was sent")
        parked = _body_files(proxy)
        for sock, body in zip(held, forms, strict=True):
            sock.sendall(body[-1:])
        served = _status_lines(held, within=15.0)
    finally:
        for sock in attackers + held:
            sock.close()

    print(
        f"\nbodies: {ATTACKERS} connections declaring {DECLARED:,} bytes answered at once with "
        f"{sorted(set(answered_at_once), key=str)}; {len(parked)} body files held; "
        f"{AT_CAP} forms of {cap:,} bytes answered {sorted(set(served), key=str)}"
    )
    assert parked == [], parked
    assert answered_at_once == [413] * ATTACKERS
    assert served == [303] * AT_CAP  # a body of exactly the cap passes nginx and is saved
    page = browser.get(f"{proxy.url}/", timeout=10).text
    assert sorted(listed_messages(page)) == sorted(
        ["first", *(f"at cap {n}" for n in range(AT_CAP))]
    )


def _reply(port: int, head: bytes, source: str = "127.0.0.1") -> bytes:
    """One request from the client address ``source``; the response read up to the end of its
    header (a refused request's body is never sent, so nginx keeps the connection until its
    timeout)."""
    with _connect(port, source) as conn:
        conn.sendall(head)
        reply = b""
        while b"\r\n\r\n" not in reply and (chunk := conn.recv(65536)):
            reply += chunk
    return reply


def _exchange(port: int, head: bytes, source: str = "127.0.0.1") -> tuple[int, dict[str, str]]:
    """The status and header fields (lower-case names) of ``_reply``."""
    status, fields = _head(_reply(port, head, source))
    return status, {name.lower(): value for name, value in fields}


def _get(port: int, source: str = "127.0.0.1", forwarded_for: str | None = None) -> int:
    extra = "" if forwarded_for is None else f"X-Forwarded-For: {forwarded_for}\r\n"
    head = f"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n{extra}\r\n".encode()
    return _exchange(port, head, source)[0]


def test_the_body_cap_follows_message_max_length(start_pod, settings) -> None:
    """nginx refuses one byte over the app's own cap, computed from the same setting, from the
    header alone; a body of exactly the cap reaches the app."""
    proxy, _ = start_pod(MESSAGE_MAX_LENGTH="500")
    cap = replace(settings, message_max_length=500).max_content_length
    browser = requests.Session()
    token = csrf_token(browser.get(f"{proxy.url}/", timeout=10).text)
    body = f"csrf_token={token}&message=exactly+the+cap&pad=".encode()
    exact = body + b"x" * (cap - len(body))
    saved = browser.post(
        f"{proxy.url}/persistMessage",
        data=exact,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        allow_redirects=False,
        timeout=10,
    )
    assert saved.status_code == 303
    with _connect(proxy.port) as conn:
        conn.sendall(_post_head(cap + 1))
        (status,) = _status_lines([conn], within=5.0)  # before any body byte is sent
    assert status == 413
    status, fields = _exchange(proxy.port, _post_head(cap + 1, extra="Connection: close\r\n"))
    assert status == 413
    assert "x-served-by" not in fields  # nginx's answer: the body never reached the app
    for header in SECURITY_HEADERS:
        assert header.lower() in fields, (header, fields)
    # Chunked (no Content-Length): the same cap on the body as sent, and held in memory.
    cookie = "; ".join(f"{k}={v}" for k, v in browser.cookies.get_dict().items())
    head = (
        "POST /persistMessage HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        f"Cookie: {cookie}\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    body = f"csrf_token={token}&message=chunked+at+the+cap&pad=".encode()
    data = head + chunked_body(body + b"x" * (cap - len(body)))
    with _connect(proxy.port) as conn:
        conn.sendall(data[:-1])
        wait_until(lambda: _unread(proxy.port) == 0, 15, "nginx to read the chunked body")
        parked = _body_files(proxy)
        conn.sendall(data[-1:])
        (status,) = _status_lines([conn], within=15.0)
    assert parked == [] and status == 303
    over = head + chunked_body(body + b"x" * (cap + 1 - len(body)))
    status, fields = _exchange(proxy.port, over)
    assert status == 413 and "x-served-by" not in fields
    assert listed_messages(browser.get(f"{proxy.url}/", timeout=10).text) == [
        "exactly the cap",
        "chunked at the cap",
    ]


def _limit_per_client() -> int:
    found = re.search(r"^\s*limit_conn \w+ (\d+);", (REPO_ROOT / "nginx.conf").read_text(), re.M)
    assert found, "nginx.conf sets no limit_conn"
    return int(found.group(1))


def test_connections_per_client_address_are_limited(pod, settings) -> None:
    """Each client address may have so many requests under way at once (here: bodies held one
    byte short); one more is refused at once, while other addresses are served. Behind a load
    balancer in the VPC (an ALB) the client is the address it adds to X-Forwarded-For."""
    proxy, _ = pod
    limit = _limit_per_client()
    cap = settings.max_content_length
    browser = requests.Session()
    token = csrf_token(browser.get(f"{proxy.url}/", timeout=10).text)
    first = {"message": "first", "csrf_token": token}
    assert browser.post(f"{proxy.url}/persistMessage", data=first, timeout=10).ok
    cookie = "; ".join(f"{k}={v}" for k, v in browser.cookies.get_dict().items())

    held: list[tuple[socket.socket, bytes]] = []

    def hold(forwarded_for: str = "", source: str = "127.0.0.1") -> None:
        body = f"csrf_token={token}&save_id=held-save-{len(held):06d}&message=held&pad="
        data = (body + "x" * (cap - len(body))).encode()
        extra = f"X-Forwarded-For: {forwarded_for}\r\n" if forwarded_for else ""
        sock = _connect(proxy.port, source)
        sock.sendall(_post_head(len(data), cookie, extra) + data[:-1])
        held.append((sock, data))

    try:
        for _ in range(limit):
            hold()  # a client straight from the NLB: its own address is the peer
        for _ in range(limit):
            hold("203.0.113.7")  # clients behind an ALB: the ALB (here 127.0.0.1) is the peer
        # A peer that is not in FORWARDED_ALLOW_IPS (another pod, anything else in the VPC;
        # here 127.0.0.9) inventing an address for each request: its own address counts (found
        # by review: nginx believed every private peer, so each invented address was a client).
        for number in range(limit):
            hold(f"198.51.100.{number}", source="127.0.0.9")
        wait_until(lambda: _unread(proxy.port) == 0, 15, "nginx to read the held bodies")
        refused, fields = _exchange(
            proxy.port, b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        )
        answers = {
            "same address": refused,
            "another address": _get(proxy.port, "127.0.0.2"),
            "same address behind the ALB": _get(proxy.port, forwarded_for="203.0.113.7"),
            "another client behind the ALB": _get(proxy.port, forwarded_for="203.0.113.8"),
            "an untrusted peer, inventing": _get(proxy.port, "127.0.0.9", "198.51.100.250"),
        }
        for sock, data in held:
            sock.sendall(data[-1:])
        served = _status_lines([sock for sock, _ in held], within=30.0)
    finally:
        for sock, _ in held:
            sock.close()
    after = _get(proxy.port)
    print(f"\nconnection limit {limit} per client address: {answers}; held bodies {set(served)}")
    assert answers == {
        "same address": 429,
        "another address": 200,
        "same address behind the ALB": 429,
        "another client behind the ALB": 200,
        "an untrusted peer, inventing": 429,
    }
    for header in SECURITY_HEADERS:
        assert header.lower() in fields, (header, fields)
    assert served == [303] * (3 * limit)  # the held requests lost nothing
    assert after == 200


def _max_in_flight() -> int:
    """The pod's bound on requests handed to gunicorn at once (max_conns in nginx.conf)."""
    found = re.search(
        r"^\s*server [\d.:]+ max_conns=(\d+);", (REPO_ROOT / "nginx.conf").read_text(), re.M
    )
    assert found, "nginx.conf sets no max_conns"
    return int(found.group(1))


def _request_id(client: str) -> str:
    return "client-" + client.replace(".", "-")


PROBES = ("/healthz", "/readyz")  # k8s/deployment.yaml's, and the load balancers'
OUTSIDER = "203.0.113.9"  # an internet client, behind the ALB


def _page_from(port: int, client: str, path: str = "/") -> tuple[int, list[tuple[str, str]], str]:
    """GET ``path`` as the client ``client`` behind a trusted load balancer (X-Forwarded-For),
    waiting as long as the test holds gunicorn; the status, header fields and body. Its request
    id (in both logs) names the client."""
    head = f"GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n"
    if client:
        head += f"X-Forwarded-For: {client}\r\nX-Request-ID: {_request_id(client)}\r\n"
    reply = raw_exchange(port, (head + "\r\n").encode(), timeout=120)
    status, fields = _head(reply)
    return status, fields, reply.split(b"\r\n\r\n", 1)[1].decode(errors="replace")


def test_past_its_bound_the_pod_refuses_at_once_and_still_answers_its_probes(start_pod) -> None:
    """A pod past what it can serve (here: gunicorn frozen, so nothing it is handed finishes)
    holds at most max_conns requests in gunicorn's queue: each one more is answered 503 at once
    with a page saying it was not carried out, Retry-After and the security headers, logged by
    nginx and never passed on. The probes are not bounded with the pages: they are passed on
    and answered, so the kubelet never restarts a pod for being busy (from private addresses
    only: from the internet they are pages like the rest). Every request held is
    served once gunicorn goes on. Before the bound, every request queued and none was refused:
    the probes waited behind all of them (docs/sizing.md)."""
    proxy, replica = start_pod()
    bound, extra = _max_in_flight(), 20
    # Each from its own address, so that the per-address limit (limit_conn) refuses none.
    clients = [f"198.18.{n // 200}.{n % 200 + 1}" for n in range(bound + extra)]
    with ThreadPoolExecutor(max_workers=len(clients) + 2) as pool:
        with _frozen(replica):
            pages = [pool.submit(_page_from, proxy.port, client) for client in clients]
            wait_until(
                lambda: sum(page.done() for page in pages) >= extra,
                30,
                f"nginx to refuse the {extra} requests past its bound",
            )
            refused = {
                client: page.result()
                for client, page in zip(clients, pages, strict=True)
                if page.done()
            }
            probes = [pool.submit(_page_from, proxy.port, "", path) for path in PROBES]
            # The same path from an internet address: a page like the rest, inside the bound.
            outside = pool.submit(_page_from, proxy.port, OUTSIDER, PROBES[0])
            wait_until(
                lambda: sum(q > 0 for q in _receive_queues(replica.port)) >= bound + len(PROBES),
                30,
                "nginx to pass the probes on",
            )
            outsider = outside.result(timeout=30)[0]
        held = {client: page.result()[0] for client, page in zip(clients, pages, strict=True)}
        probed = [probe.result()[0] for probe in probes]
    assert len(refused) == extra  # no more: none of the held ones finished while frozen
    for status, fields, body in refused.values():
        assert status == 503
        names = [name.lower() for name, _ in fields]
        for header in (*SECURITY_HEADERS, "Retry-After"):
            assert names.count(header.lower()) == 1, (header, fields)
        assert dict(fields)["Retry-After"] == "5" and "X-Served-By" not in dict(fields)
        assert "too busy" in body and "not carried out" in body and "nginx" not in body
    assert sorted(held.values()) == [200] * bound + [503] * extra
    assert probed == [200, 200] and outsider == 503
    logged = [(line["status"], line["remote_addr"]) for line in _nginx_lines(proxy)]
    assert sorted(logged) == sorted((503, client) for client in [*refused, OUTSIDER])
    ids = {_request_id(client) for client in clients}

    def served() -> set[str]:
        access = [json.loads(x) for x in replica.log().splitlines() if x.startswith("{")]
        return ids & {a["request_id"] for a in access if a["logger"] == "gunicorn.access"}

    passed_on = {_request_id(client) for client in clients if client not in refused}
    # gunicorn writes its line once the answer is sent: the client may have it first.
    wait_until(lambda: served() >= passed_on, 15, "gunicorn to log what it answered")
    assert served() == passed_on
    assert _page_from(proxy.port, clients[0])[0] == 200


HELD_BODIES = 300  # from as many client addresses, so that the per-address limit allows them


def _resident_bytes(pid: int) -> int:
    found = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    assert found
    return int(found.group(1)) * 1024


def test_a_held_body_costs_nginx_its_buffer_and_little_more(pod, settings) -> None:
    """What docs/failure-behaviour.md states and k8s/deployment.yaml's memory limit is sized
    by (tests/infra/test_k8s.py): a connection holding a body of the cap, one byte short, costs
    nginx's worker the body buffer plus at most NGINX_CONNECTION_OVERHEAD."""
    proxy, _ = pod
    cap = settings.max_content_length
    (worker,) = proxy.worker_pids()
    before = _resident_bytes(worker)
    held = []
    try:
        for number in range(HELD_BODIES):
            sock = _connect(proxy.port, f"127.0.{1 + number // 250}.{1 + number % 250}")
            sock.sendall(_post_head(cap) + b"m" * (cap - 1))
            held.append(sock)
        wait_until(lambda: _unread(proxy.port) == 0, 15, "nginx to read the held bodies")
        per_connection = (_resident_bytes(worker) - before) / HELD_BODIES
        assert _body_files(proxy) == []
    finally:
        for sock in held:
            sock.close()
    print(
        f"\nheld bodies: {HELD_BODIES} connections with {cap - 1:,} bytes each cost nginx "
        f"{per_connection:,.0f} bytes each ({per_connection - cap:,.0f} besides the body)"
    )
    assert cap <= per_connection <= cap + NGINX_CONNECTION_OVERHEAD
