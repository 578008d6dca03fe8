"""Three real gunicorn replicas sharing one real Valkey: the reason this app exists.

One cookie jar is used against all three in turn, as a load balancer without stickiness would.
The tests that use ``replicas`` run twice: on a single Valkey and on a Valkey cluster, each
started once for the module (emptied before each test).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from localservers.cluster import ValkeyCluster
from localservers.gunicorn import Gunicorn
from localservers.ports import listening_port
from localservers.processes import child_pids
from localservers.valkey import Valkey
from localservers.waits import wait_until
from tests.support import (
    command_calls,
    csrf_token,
    listed_messages,
    served_by,
    session_keys,
    stored_messages,
)

from .cluster import flushed
from .faults import SlowLink
from .fleet import replica_fleet

# Well inside the app's 10 s cache age limit and Redis health-check interval.
FRESH = 4.0


NAMES = ("replica-a", "replica-b", "replica-c")


@pytest.fixture(scope="module")
def fleet(
    shared_any_valkey: Valkey | ValkeyCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[Gunicorn]]:
    with replica_fleet(shared_any_valkey.port, NAMES, tmp_path_factory.mktemp("fleet")) as fleet:
        yield fleet


@pytest.fixture
def replicas(fleet: list[Gunicorn], shared_any_valkey: Valkey | ValkeyCluster) -> list[Gunicorn]:
    """The module's three replicas on its Valkey (then its cluster), the store emptied for this
    test. The tests that use them leave the servers as they found them; a test that kills a
    replica or stops Redis has its own (``own_replicas``)."""
    flushed(shared_any_valkey)
    assert all(replica.process.poll() is None for replica in fleet)
    return fleet


@pytest.fixture
def own_replicas(any_valkey: Valkey | ValkeyCluster, tmp_path: Path) -> Iterator[list[Gunicorn]]:
    """Three replicas on a Valkey (then a cluster) of this test's own."""
    with replica_fleet(any_valkey.port, NAMES, tmp_path) as fleet:
        yield fleet


def browse(base: str, session: requests.Session) -> str:
    response = session.get(f"{base}/", timeout=10)
    assert response.status_code == 200, response.text
    return response.text


def save(base: str, session: requests.Session, text: str, token: str) -> requests.Response:
    return session.post(
        f"{base}/persistMessage",
        data={"message": text, "csrf_token": token},
        allow_redirects=False,
        timeout=10,
    )


def test_every_replica_serves_the_same_session(replicas):
    browser = requests.Session()
    token = csrf_token(browse(replicas[0].url, browser))
    saved: list[str] = []
    seen = set()
    for i in range(12):
        replica = replicas[i % 3]
        text = f"message {i} via {replica.name}"
        assert save(replica.url, browser, text, token).status_code == 303
        saved.append(text)
        # The very next request, on the next replica, lists everything saved so far.
        page = browse(replicas[(i + 1) % 3].url, browser)
        assert listed_messages(page) == saved
        seen.add(served_by(page))
    assert seen == {"replica-a", "replica-b", "replica-c"}


def test_killing_a_replica_loses_nothing(own_replicas):
    replicas = own_replicas
    browser = requests.Session()
    token = csrf_token(browse(replicas[0].url, browser))
    for i, replica in enumerate(replicas):
        assert save(replica.url, browser, f"m{i}", token).status_code == 303
    replicas[0].stop(signal.SIGKILL)
    for replica in replicas[1:]:
        assert listed_messages(browse(replica.url, browser)) == ["m0", "m1", "m2"]


def test_200_concurrent_saves_on_one_session_store_200_messages(replicas):
    browser = requests.Session()
    token = csrf_token(browse(replicas[0].url, browser))
    assert save(replicas[0].url, browser, "seed", token).status_code == 303
    cookies = browser.cookies.get_dict()
    texts = [f"concurrent {i}" for i in range(200)]

    def one(i: int) -> int:
        # A fresh connection per save, with the same cookies: like many tabs at once.
        return requests.post(
            f"{replicas[i % 3].url}/persistMessage",
            data={"message": texts[i], "csrf_token": token},
            cookies=cookies,
            allow_redirects=False,
            timeout=30,
        ).status_code

    with ThreadPoolExecutor(32) as pool:
        statuses = list(pool.map(one, range(200)))
    assert statuses == [303] * 200
    listed = listed_messages(browse(replicas[1].url, browser))
    assert listed[0] == "seed"
    assert sorted(listed[1:]) == sorted(texts)
    print(f"\nconcurrency: 200 parallel saves over 3 replicas -> {len(listed) - 1} stored")


def test_concurrent_saves_one_short_of_the_limit_store_exactly_one(valkey, start_replica):
    """Every save sees room for one more message; the limit holds only if check and append
    are one atomic step."""
    replicas = [
        start_replica(valkey.port, name, MESSAGES_MAX_PER_SESSION="5", WEB_CONCURRENCY="4")
        for name in ("limit-a", "limit-b")
    ]
    browser = requests.Session()
    token = csrf_token(browse(replicas[0].url, browser))
    for i in range(4):
        assert save(replicas[i % 2].url, browser, f"m{i}", token).status_code == 303
    cookies = browser.cookies.get_dict()
    start = threading.Barrier(16)

    def one(i: int) -> int:
        with requests.Session() as tab:
            tab.cookies.update(cookies)
            start.wait(30)  # all at once, each on its own connection
            return save(replicas[i % 2].url, tab, f"last {i}", token).status_code

    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(one, range(16)))
    assert sorted(statuses) == [303] + [409] * 15, statuses
    listed = listed_messages(browse(replicas[1].url, browser))
    assert listed[:4] == ["m0", "m1", "m2", "m3"]
    assert len(listed) == 5 and listed[4].startswith("last ")


def test_redis_outage_answers_503_then_recovers_with_every_message(own_replicas, any_valkey):
    replicas = own_replicas
    valkey = any_valkey
    browser = requests.Session()
    token = csrf_token(browse(replicas[0].url, browser))
    for i in range(3):
        assert save(replicas[i].url, browser, f"before {i}", token).status_code == 303
    valkey.stop()
    for replica in replicas:
        page = browser.get(f"{replica.url}/", timeout=10)
        assert page.status_code == 503
        assert page.headers["Retry-After"] == "5"
        assert save(replica.url, browser, "during", token).status_code == 503
    restarted = time.monotonic()
    valkey.start()

    def page_ok(replica) -> bool:
        return browser.get(f"{replica.url}/", timeout=10).status_code == 200

    wait_until(lambda: page_ok(replicas[1]), 60, "the first 200 after Redis came back")
    recovery = time.monotonic() - restarted
    for replica in replicas:
        # Each worker tries Redis again once its cool-down (a second) has passed.
        wait_until(lambda r=replica: page_ok(r) and page_ok(r), 10, f"{replica.name} to recover")
        assert listed_messages(browse(replica.url, browser)) == [f"before {i}" for i in range(3)]
    assert save(replicas[2].url, browser, "after", token).status_code == 303
    for replica in replicas:
        statuses = {line.get("status") for line in log_lines(replica)}
        assert 503 in statuses, "the outage's answers are in the access log"
        assert 500 not in statuses
    print(f"\noutage: first 200 {recovery:.2f}s after Redis was started again")


def test_destroy_removes_every_key(replicas, shared_any_valkey):
    browser = requests.Session()
    token = csrf_token(browse(replicas[0].url, browser))
    for i, replica in enumerate(replicas):
        assert save(replica.url, browser, f"m{i}", token).status_code == 303
    admin = shared_any_valkey.client()
    assert len(session_keys(admin)) == 1
    response = browser.post(
        f"{replicas[1].url}/destroy", data={"csrf_token": token}, allow_redirects=False, timeout=10
    )
    assert response.status_code == 303
    assert list(admin.scan_iter("*")) == []
    assert listed_messages(browse(replicas[2].url, browser)) == []


def test_redis_commands_per_request(valkey, start_replica):
    admin = valkey.client()
    browser = requests.Session()
    # One worker, so that "warm" is certain: each worker keeps its own cache.
    url = start_replica(valkey.port, "counted", WEB_CONCURRENCY="1").url
    token = csrf_token(browse(url, browser))
    assert save(url, browser, "warm", token).status_code == 303
    saves = iter(range(1000))

    def counts() -> dict[str, int]:
        stats = admin.info("commandstats")
        return {k.removeprefix("cmdstat_"): v["calls"] for k, v in stats.items()}

    def commands(action: Callable[[], object]) -> dict[str, int]:
        """What one warm action costs in Redis commands, measured alone.

        A sample is kept only if the warm-up and the action took less than FRESH seconds:
        on a slow machine a cached read can age out (or a pooled connection be due for its
        health-check PING), which is the cache working as designed, not a cost per request.
        """
        for _ in range(20):
            started = time.monotonic()
            browse(url, browser)  # warm: whatever the last action changed is read again
            before = counts()
            action()
            after = counts()
            if time.monotonic() - started < FRESH:
                # INFO is this test's own; ROLE is each worker's failover check (once a second).
                ignored = ("info", "role")
                changed = {k: after[k] - before.get(k, 0) for k in after if k not in ignored}
                return {k: v for k, v in changed.items() if v}
        raise AssertionError(f"no sample took less than {FRESH}s: the machine is overloaded")

    def save_and_follow() -> None:
        # What a browser does: the POST, then the GET it is redirected to.
        assert save(url, browser, f"m{next(saves)}", token).status_code == 303
        browse(url, browser)

    per_view = [commands(lambda: browse(url, browser)) for _ in range(10)]
    per_save = [commands(save_and_follow) for _ in range(10)]
    print(
        f"\nredis commands per warm GET /: {per_view[0]}; per save + redirected GET: {per_save[0]}"
    )
    assert per_view == [{}] * 10
    # One round trip: EVALSHA (the rest run inside the script). The worker that saved keeps its
    # cached copy current with what it appended, so the page it redirects to reads nothing.
    # (No WAIT: this Valkey has no replica.)
    expected = {"evalsha": 1, "hget": 1, "hmget": 1, "hset": 1, "expire": 1, "exists": 1}
    assert per_save == [expected] * 10


def _accepted(master: int, server_port: int, client_port: int) -> bool:
    """True once a worker process holds the server side of our connection.

    Workers are looked up on every call (the master may have replaced one), and only live
    sockets count: an earlier connection's TIME_WAIT entry can share the ports, with inode 0.
    """
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = (int(f.split(":")[1], 16) for f in fields[1:3])
        if (local, remote) == (server_port, client_port) and fields[9] != "0":
            inodes.add(f"socket:[{fields[9]}]")
    return any(inodes & _open_sockets(pid) for pid in child_pids(master)) if inodes else False


def _open_sockets(pid: int) -> set[str]:
    targets = set()
    with contextlib.suppress(OSError):  # the process may have exited
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):  # the descriptor may have been closed
                targets.add(os.readlink(fd))
    return targets


def test_sigterm_lets_in_flight_requests_finish(valkey, start_replica):
    # No metrics server: the master's only listening socket is then the app's (see below).
    replica = start_replica(valkey.port, "draining", WEB_CONCURRENCY="1", METRICS_PORT="0")
    browser = requests.Session()
    token = csrf_token(browse(replica.url, browser))
    cookie = "; ".join(f"{k}={v}" for k, v in browser.cookies.get_dict().items())
    body = f"message=in+flight&csrf_token={token}".encode()
    master = replica.process.pid
    with socket.create_connection(("127.0.0.1", replica.port), timeout=60) as conn:
        # Headers and part of the body: the worker takes the request and waits for the rest.
        conn.sendall(
            b"POST /persistMessage HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            + f"Cookie: {cookie}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body[:10]
        )
        client_port = conn.getsockname()[1]
        wait_until(lambda: _accepted(master, replica.port, client_port), 60, "a worker to accept")
        replica.process.send_signal(signal.SIGTERM)
        # The master closes its listening socket as the first step of its shutdown, then
        # signals the workers (and, with graceful_timeout = 0, kills them at once).
        wait_until(lambda: listening_port(master) is None, 60, "the master to begin shutdown")
        # The request stays in flight for a second of the shutdown: far less than the graceful
        # timeout, far more than a master without one takes to kill its workers.
        time.sleep(1)
        conn.sendall(body[10:])
        reply = conn.recv(4096).decode()
    assert reply.startswith("HTTP/1.1 303"), f"{reply!r}\n{replica.log()}"
    assert replica.process.wait(60) == 0
    (sid,) = re.findall(r"Set-Cookie: session=([^;]+);", reply)
    assert stored_messages(valkey.client, sid) == ["in flight"]


def log_lines(replica) -> list[dict]:
    return [json.loads(line) for line in replica.log().splitlines() if line.strip()]


def test_logs_are_json_lines_with_request_ids(replicas):
    browser = requests.Session()
    response = browser.get(f"{replicas[0].url}/", headers={"X-Request-ID": "abc-123"}, timeout=10)
    assert response.headers["X-Request-ID"] == "abc-123"
    wait_until(lambda: "abc-123" in replicas[0].log(), 60, "the access log line")
    access = [line for line in log_lines(replicas[0]) if line.get("request_id") == "abc-123"]
    assert access and access[0]["status"] == 200 and access[0]["path"] == "/"


def test_an_unresponsive_redis_gives_503_not_500_and_recovers(valkey, start_replica):
    """Redis frozen (SIGSTOP: connections stay open, nothing answers) rather than gone."""
    replica = start_replica(valkey.port, "frozen", WEB_CONCURRENCY="1")
    browser = requests.Session()
    token = csrf_token(browse(replica.url, browser))
    assert save(replica.url, browser, "before", token).status_code == 303
    redis_pid = valkey.client().info("server")["process_id"]
    os.kill(redis_pid, signal.SIGSTOP)
    try:
        response = browser.post(
            f"{replica.url}/persistMessage",
            data={"message": "while frozen", "csrf_token": token},
            allow_redirects=False,
            timeout=30,  # below gunicorn's worker timeout; the app answers within seconds
        )
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "5"
        # A page may still come from the worker's cache (nothing can change while Redis is
        # frozen), or be a 503; never a 500, never a wrong list.
        page = browser.get(f"{replica.url}/", timeout=30)
        assert page.status_code in (200, 503)
        if page.status_code == 200:
            assert listed_messages(page.text) == ["before"]
    finally:
        os.kill(redis_pid, signal.SIGCONT)

    def saved_after() -> bool:
        return save(replica.url, browser, "after", token).status_code == 303

    wait_until(saved_after, 60, "a save once Redis answers again")
    # The save answered 503 may have reached Redis before its timeout (then it is stored once
    # when Redis wakes up): a 503 says "not confirmed", never "stored twice".
    listed = listed_messages(browse(replica.url, browser))
    assert listed in (["before", "after"], ["before", "while frozen", "after"])
    statuses = {line.get("status") for line in log_lines(replica)}
    assert 503 in statuses and 500 not in statuses


def test_a_save_is_listed_by_the_next_page_on_a_replica_with_a_slow_redis_link(
    valkey, start_replica
):
    """Redis writes its reply to the saving worker before (or beside) the invalidation it pushes
    to every other worker that cached the session, and the user's next request may reach one of
    them first: here the reader's link to Redis is slow, so its invalidations arrive 0.15 s
    late. Without the slow link the same race shows on a loaded machine: 0 to 11 stale pages
    in 1,500 save-then-read pairs between two one-worker replicas on loopback."""
    with contextlib.closing(SlowLink(valkey.port, seconds=0.15)) as slow:
        writer = start_replica(valkey.port, "writer", WEB_CONCURRENCY="1")
        reader = start_replica(slow.port, "reader", WEB_CONCURRENCY="1")
        browser = requests.Session()
        token = csrf_token(browse(writer.url, browser))
        saved: list[str] = []
        for i in range(5):
            text = f"message {i}"
            assert save(writer.url, browser, text, token).status_code == 303
            saved.append(text)
            # The very next request, on the reader: it has this session cached from the last
            # round (the first round: not yet), and must not show it without the new message.
            assert listed_messages(browse(reader.url, browser)) == saved


def test_a_tab_whose_save_answer_overtook_another_tabs_still_sees_its_message(
    valkey, start_replica
):
    """Two tabs save at once through two replicas, and their answers reach the browser in the
    other order: the ``saved`` cookie, shared by both tabs, ends with the first tab's lower
    number. The second tab follows its 303 to a third replica, whose cached copy holds that
    many messages and whose invalidation is late (a slow link): it must still list the second
    tab's message. Before, the cookie was all it had to go by: the page lacked the message.
    (Found by review.)"""
    with contextlib.closing(SlowLink(valkey.port, seconds=0.3)) as slow:
        tab_x, tab_y = (
            start_replica(valkey.port, name, WEB_CONCURRENCY="1") for name in ("x", "y")
        )
        reader = start_replica(slow.port, "reader", WEB_CONCURRENCY="1")
        jar: dict[str, str] = {}

        def send(method: str, url: str, **data: str) -> requests.Response:
            return requests.request(
                method, url, data=data or None, cookies=jar, allow_redirects=False, timeout=10
            )

        def keep(response: requests.Response) -> None:
            jar.update(response.cookies.get_dict())  # what a browser does with its Set-Cookie

        first = send("GET", f"{tab_x.url}/")
        keep(first)  # the CSRF cookie
        token = csrf_token(first.text)
        for text in ("m1", "m2"):
            saved = send("POST", f"{tab_x.url}/persistMessage", message=text, csrf_token=token)
            assert saved.status_code == 303
            keep(saved)
        admin = valkey.client()
        roles = command_calls(admin, "role")
        # Right after the reader's once-a-second role check, so that none comes (and reads
        # the late invalidation) before the last page view below.
        wait_until(
            lambda: (
                bool(send("GET", f"{reader.url}/").text) and command_calls(admin, "role") > roles
            ),
            10,
            "the reader's role check",
        )
        before = dict(jar)
        saved_x = send("POST", f"{tab_x.url}/persistMessage", message="m3 x", csrf_token=token)
        keep(saved_x)
        assert listed_messages(send("GET", f"{reader.url}/").text) == ["m1", "m2", "m3 x"]
        jar.clear()
        jar.update(before)  # tab Y's form was sent with the cookies of before X's answer
        saved_y = send("POST", f"{tab_y.url}/persistMessage", message="m4 y", csrf_token=token)
        assert (saved_x.status_code, saved_y.status_code) == (303, 303)
        keep(saved_y)
        keep(saved_x)  # X's answer arrives last: the cookie now says 3
        assert jar["saved"] == "3"
        page = send("GET", f"{reader.url}{saved_y.headers['Location']}")
        assert listed_messages(page.text) == ["m1", "m2", "m3 x", "m4 y"]
