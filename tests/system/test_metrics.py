"""Prometheus metrics, scraped from a real gunicorn (two workers) against a real Valkey.

Every count is compared with what the test sent, after parsing the scrape with
prometheus_client's own text parser; the workers share the counts through the multiprocess
directory, so which worker answered does not matter.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import socket
import string
import threading
import time
from collections import Counter

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from app import metrics, metrics_server
from app.refusals import REFUSALS
from localservers.ports import free_port, listening_sockets, socket_inodes
from localservers.processes import child_pids
from localservers.waits import wait_until
from tests.support import csrf_token

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
# Requests answered: the duration histogram's count, by route, method and status.
REQUESTS = "messageapp_http_request_duration_seconds_count"


def scrape(port: int) -> Samples:
    response = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    assert response.status_code == 200
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every series of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def delta(before: Samples, after: Samples) -> Samples:
    keys = set(before) | set(after)
    return {k: after.get(k, 0.0) - before.get(k, 0.0) for k in keys if not k[0].endswith("_sum")}


@pytest.fixture
def metrics_replica(valkey, start_replica):
    """A replica with its metrics on a free loopback port; returns (replica, metrics port)."""

    def start(**env: str):
        port = free_port()
        return start_replica(valkey.port, "metrics", METRICS_PORT=str(port), **env), port

    return start


def post(base: str, browser: requests.Session, path: str, **data: str) -> int:
    return browser.post(f"{base}{path}", data=data, allow_redirects=False, timeout=10).status_code


def test_counts_match_a_known_sequence_of_requests(metrics_replica):
    replica, port = metrics_replica(MESSAGES_MAX_PER_SESSION="3")
    base = replica.url
    before = scrape(port)
    # Shown from the start, before any request reached Redis: cfn/edge.yaml's alarm on missing
    # app metrics counts its samples.
    assert before[("messageapp_fail_fast_responses_total", frozenset())] == 0
    # And every kind of error of every operation, at 0: the CloudWatch agent takes a counter's
    # first sample as its baseline, so a series born with its first errors never showed them
    # (a pod started during a failover, or a short one's first burst; found by review).
    for operation in metrics.REDIS_OPERATIONS:
        for kind in metrics.ERROR_KINDS:
            labels = frozenset({"operation": operation, "kind": kind}.items())
            assert before[("messageapp_redis_errors_total", labels)] == 0, (operation, kind)
    browser = requests.Session()
    statuses: Counter[tuple[str, str, str]] = Counter()

    def get(path: str, route: str) -> None:
        response = browser.get(f"{base}{path}", allow_redirects=False, timeout=10)
        statuses[(route, "GET", str(response.status_code))] += 1

    def send(path: str, **data: str) -> int:
        status = post(base, browser, path, **data)
        statuses[(path, "POST", str(status))] += 1
        return status

    get("/", "/")
    token = csrf_token(browser.get(f"{base}/", timeout=10).text)
    statuses[("/", "GET", "200")] += 1
    for i in range(3):
        assert send("/persistMessage", message=f"m{i}", csrf_token=token) == 303
    assert send("/persistMessage", message="one too many", csrf_token=token) == 409
    assert send("/persistMessage", message="   ", csrf_token=token) == 400
    assert send("/persistMessage", message="x" * 2001, csrf_token=token) == 400
    assert send("/persistMessage", message="no token") == 400
    for _ in range(2):
        get("/", "/")
    get("/no/such/page", metrics.UNMATCHED)
    response = browser.delete(f"{base}/", timeout=10)  # 405: no rule matched this method
    statuses[(metrics.UNMATCHED, "DELETE", str(response.status_code))] += 1
    assert send("/destroy", csrf_token=token) == 303
    get("/", "/")

    changed = delta(before, scrape(port))
    for (route, method, status), count in statuses.items():
        labels = {"route": route, "method": method, "status": status}
        assert value(changed, REQUESTS, **labels) == count, labels
    assert total(changed, REQUESTS) == sum(statuses.values())
    for (route, method, status), count in statuses.items():
        inf = {"route": route, "method": method, "status": status, "le": "+Inf"}
        assert value(changed, "messageapp_http_request_duration_seconds_bucket", **inf) == count

    assert value(changed, "messageapp_message_saves_total") == 3
    refusals = {r: value(changed, "messageapp_message_refusals_total", reason=r) for r in REFUSALS}
    assert refusals == {
        **dict.fromkeys(REFUSALS, 0),
        "over_count": 1,
        "empty": 1,
        "too_long": 1,
        "csrf": 1,
    }
    assert value(changed, "messageapp_sessions_created_total") == 1
    assert value(changed, "messageapp_sessions_destroyed_total") == 1
    # The save script ran for the three saves and the refused fourth.
    redis_count = "messageapp_redis_call_duration_seconds_count"
    assert value(changed, redis_count, operation="save") == 4
    assert value(changed, redis_count, operation="delete") == 1
    assert total(changed, "messageapp_redis_errors_total") == 0
    # Every operation the app timed is one of those made at 0 from the start.
    timed = {dict(ls)["operation"] for (n, ls) in changed if n == redis_count}
    assert timed <= set(metrics.REDIS_OPERATIONS), timed - set(metrics.REDIS_OPERATIONS)
    assert value(changed, "messageapp_fail_fast_responses_total") == 0
    # Reads are timed only when they reach Redis: exactly the read cache's misses (the worker
    # that saved keeps its copy current, so here there may be none).
    reads = value(changed, redis_count, operation="read")
    assert value(changed, "messageapp_read_cache_misses_total") == reads
    assert value(changed, "messageapp_read_cache_hits_total") > 0
    # The session id never reaches a label.
    sid = browser.cookies.get("session") or ""
    scraped = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    assert not sid or sid not in scraped


def test_a_worker_restart_neither_loses_nor_doubles_counts(metrics_replica):
    replica, port = metrics_replica()
    for _ in range(10):
        assert requests.get(f"{replica.url}/", timeout=10).status_code == 200
    master = replica.process.pid
    wait_until(lambda: len(child_pids(master)) == 2, 20, "two workers")
    before = scrape(port)
    assert value(before, REQUESTS, route="/", method="GET", status="200") == 10

    old = child_pids(master)
    victim = min(old)
    os.kill(victim, signal.SIGKILL)
    wait_until(
        lambda: len(child_pids(master)) == 2 and victim not in child_pids(master),
        20,
        "gunicorn to replace the killed worker",
    )
    after = scrape(port)
    assert delta(before, after) == dict.fromkeys(delta(before, after), 0.0)
    assert requests.get(f"{replica.url}/", timeout=10).status_code == 200
    labels = {"route": "/", "method": "GET", "status": "200"}
    assert value(scrape(port), REQUESTS, **labels) == 11


def test_150_worker_restarts_leave_the_metrics_directory_as_it_was(metrics_replica, tmp_path):
    """A dead worker's files are folded into the dead workers' own: the directory holds the
    same files (but for the live worker's pid) and bytes after 150 restarts as after 3, and
    every scrape meanwhile counts each request exactly once.

    One worker, SIGKILLed after each request, as a crash or an out-of-memory kill would end it
    (max_requests and SIGHUP end workers the same way for the master). --preload makes a
    restart a fork rather than an import of the app, and /healthz needs no template compiled:
    seconds for all 150, not minutes; a worker leaves the same files either way."""
    directory = tmp_path / "prometheus"
    directory.mkdir()
    replica, port = metrics_replica(
        PROMETHEUS_MULTIPROC_DIR=str(directory), WEB_CONCURRENCY="1", GUNICORN_CMD_ARGS="--preload"
    )
    master = replica.process.pid
    labels = {"route": "/healthz", "method": "GET", "status": "200"}
    served = value(scrape(port), REQUESTS, **labels)  # start_gunicorn's readiness probes
    seen: list[float] = []  # the count of requests in each background scrape
    stop = threading.Event()

    failures: list[BaseException] = []

    def scrape_meanwhile() -> None:
        while not stop.wait(0.1):
            try:
                seen.append(value(scrape(port), REQUESTS, **labels))
            except Exception as exc:  # reported below
                failures.append(exc)

    def serve_one() -> None:
        nonlocal served
        assert requests.get(f"{replica.url}/healthz", timeout=30).status_code == 200
        served += 1

    def restart_once() -> None:
        serve_one()  # so that the worker has written its files
        (worker,) = child_pids(master)
        os.kill(worker, signal.SIGKILL)
        wait_until(lambda: child_pids(master) - {worker}, 30, "a new worker")

    def files() -> dict[str, int]:
        """The directory's files, by name with the pids named "master" and "live": sizes."""
        (live,) = child_pids(master)
        names = {str(master): "master", str(live): "live"}
        return {
            re.sub(r"\d+", lambda m: names.get(m[0], m[0]), p.name): p.stat().st_size
            for p in directory.iterdir()
        }

    scraper = threading.Thread(target=scrape_meanwhile)
    scraper.start()
    try:
        for _ in range(3):
            restart_once()
        serve_one()
        early = files()
        for _ in range(147):
            restart_once()
        serve_one()
        late = files()
    finally:
        stop.set()
        scraper.join(30)
    assert failures == []
    assert late == early, "the directory grew with the restarts"
    # prometheus_client's files for the live worker and the dead workers' (folded), besides
    # those of the master for whatever metric it made a value of when it imported the app
    # (--preload): no more files, however many workers died.
    assert sorted(n for n in early if not n.endswith("_master.db")) == [
        f"{kind}_{who}.db" for kind in ("counter", "histogram") for who in ("dead", "live")
    ]
    assert value(scrape(port), REQUESTS, **labels) == served
    assert len(seen) > 10
    assert seen == sorted(seen), "a scrape counted a dead worker's requests twice, or lost them"
    assert max(seen) <= served


def test_a_configuration_reload_keeps_counting_in_the_same_place(metrics_replica):
    """SIGHUP makes gunicorn read gunicorn.conf.py again and replace every worker."""
    replica, port = metrics_replica()
    labels = {"route": "/", "method": "GET", "status": "200"}
    for _ in range(5):
        assert requests.get(f"{replica.url}/", timeout=10).status_code == 200
    master = replica.process.pid
    wait_until(lambda: len(child_pids(master)) == 2, 20, "two workers")
    old = child_pids(master)
    replica.process.send_signal(signal.SIGHUP)
    wait_until(
        lambda: len(child_pids(master)) == 2 and not child_pids(master) & old,
        30,
        "gunicorn to replace every worker",
    )
    assert value(scrape(port), REQUESTS, **labels) == 5
    for _ in range(3):
        assert requests.get(f"{replica.url}/", timeout=10).status_code == 200
    assert value(scrape(port), REQUESTS, **labels) == 8


def test_a_restart_of_the_server_starts_from_zero(metrics_replica, tmp_path):
    """A directory named by PROMETHEUS_MULTIPROC_DIR (an emptyDir) is emptied at start."""
    directory = tmp_path / "prometheus"
    directory.mkdir()
    replica, port = metrics_replica(PROMETHEUS_MULTIPROC_DIR=str(directory))
    for _ in range(3):
        requests.get(f"{replica.url}/", timeout=10)
    assert list(directory.glob("counter_*.db"))
    replica.stop()
    replica, port = metrics_replica(PROMETHEUS_MULTIPROC_DIR=str(directory))
    labels = {"route": "/", "method": "GET", "status": "200"}
    assert value(scrape(port), REQUESTS, **labels) == 0


def test_metrics_are_not_served_on_the_main_port(metrics_replica):
    replica, port = metrics_replica()
    response = requests.get(f"{replica.url}/metrics", timeout=10)
    assert response.status_code == 404
    assert "messageapp_" not in response.text
    assert REQUESTS in requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text


def test_the_workers_do_not_hold_the_metrics_listener(metrics_replica):
    """Forked from the master, a worker would otherwise keep the port open after the master
    died, and the kernel could hand it connections it never answers."""
    replica, port = metrics_replica()
    master = replica.process.pid
    wait_until(lambda: len(child_pids(master)) == 2, 20, "two workers")
    _, listener = listening_sockets(master)[port]
    for worker in child_pids(master):
        assert listener not in socket_inodes(worker), worker
        assert port not in listening_sockets(worker)


def master_threads(replica) -> int:
    with open(f"/proc/{replica.process.pid}/status") as status:
        return int(next(line for line in status if line.startswith("Threads:")).split()[1])


def test_idle_connections_to_the_metrics_port_cost_the_master_no_more_than_a_few_threads(
    metrics_replica,
):
    """200 connections to the metrics port that never send a request (a slow or hostile client
    inside the cluster). Before, each held a thread of the gunicorn master for good: thousands
    would take the container past its memory limit, workers and all."""
    replica, port = metrics_replica()
    before = master_threads(replica)
    idle = [_idle_connection(port) for _ in range(200)]
    try:
        wait_until(
            lambda: sum(map(_closed, idle)) >= len(idle) - metrics_server.MAX_SCRAPES,
            15,
            "the metrics listener to turn away the connections past its limit",
        )
        held = master_threads(replica) - before
        print(f"\n200 idle connections to the metrics port: the master holds {held} more threads")
        # One per connection served, and the log's timer that writes the count of the lines
        # held back (app/logs.py: RepeatLimit) about the connections turned away.
        assert held <= metrics_server.MAX_SCRAPES + 1
        # Those it took time out, and scrapes are served again.
        wait_until(lambda: _scraped(port), 15, "a scrape, once the idle connections time out")
    finally:
        for connection in idle:
            connection.close()
    assert replica.process.poll() is None
    assert requests.get(f"{replica.url}/healthz", timeout=5).status_code == 200


def test_clients_sending_a_byte_at_a_time_hold_the_metrics_port_no_longer_than_its_timeout(
    metrics_replica,
):
    """As many connections as the listener serves at once, each sending its request a header
    line a second, well within each read's timeout: they are dropped once the request has taken
    SCRAPE_TIMEOUT_SECONDS in all, and scrapes are answered again. Before, they held every
    slot for as long as they kept dripping."""
    _, port = metrics_replica()
    dripping = [_idle_connection(port) for _ in range(metrics_server.MAX_SCRAPES)]
    started = time.monotonic()
    for connection in dripping:
        connection.sendall(b"GET /metrics HTTP/1.1\r\n")

    def drip_then_scrape() -> bool:
        for connection in dripping:
            with contextlib.suppress(OSError):
                connection.sendall(b"X-Drip: 1\r\n")
        return _scraped(port)

    try:
        wait_until(drip_then_scrape, 20, "a scrape while 8 clients drip their requests", 1.0)
    finally:
        for connection in dripping:
            connection.close()
    print(f"\n8 dripping clients: a scrape was answered after {time.monotonic() - started:.1f} s")


def test_a_metrics_file_that_cannot_be_read_fails_the_scrape_with_one_log_line(
    metrics_replica, tmp_path
):
    """A file in the metrics directory that prometheus_client cannot read (a damaged disk, a
    stray file): each scrape answers 500, and the master logs it as one line (its traceback a
    field of it) rather than wsgiref's traceback printed to stderr line by line, every scrape.
    Once the file is gone, scrapes are whole again."""
    directory = tmp_path / "metrics"
    replica, port = metrics_replica(PROMETHEUS_MULTIPROC_DIR=str(directory))
    assert _scraped(port)
    damaged = directory / "counter_999999.db"
    # A header saying 24 bytes are used, then an entry claiming a 1,000-byte key.
    damaged.write_bytes(b"".join(n.to_bytes(4, "little") for n in (24, 0, 1000, 0, 0, 0)))
    for _ in range(3):
        response = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
        assert response.status_code == 500
        assert "could not be read" in response.text
    log = replica.log()
    assert not [line for line in log.splitlines() if line.startswith("Traceback")]
    failed = [line for line in log.splitlines() if "a scrape failed" in line]
    assert failed and all(json.loads(line)["exception"] for line in failed), failed
    damaged.unlink()
    assert _scraped(port)
    assert replica.process.poll() is None


def _idle_connection(port: int) -> socket.socket:
    connection = socket.create_connection(("127.0.0.1", port), timeout=5)
    connection.setblocking(False)  # for _closed
    return connection


def _closed(connection: socket.socket) -> bool:
    """Whether the server has closed ``connection`` (never waits)."""
    try:
        return connection.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


def _scraped(port: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/metrics", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def test_labels_stay_bounded_under_1000_random_paths(metrics_replica):
    replica, port = metrics_replica()
    rng = random.Random(1234)  # noqa: S311 - reproducible paths, not secrets
    alphabet = string.ascii_letters + string.digits + "-._~%/"
    methods = ["GET", "POST", "HEAD", "BREW", "PROPFIND"]
    with requests.Session() as browser:
        for _ in range(1000):
            path = "/" + "".join(rng.choices(alphabet, k=rng.randint(1, 40)))
            browser.request(rng.choice(methods), f"{replica.url}{path}", timeout=10)
    samples = scrape(port)
    series = [ls for (n, ls) in samples if n == REQUESTS]
    routes = {dict(ls)["route"] for ls in series}
    assert routes <= {"/", "/persistMessage", "/destroy", "/healthz", "/readyz", "unmatched"}
    assert {dict(ls)["method"] for ls in series} <= {"GET", "POST", "HEAD", "other"}
    assert len(series) < 30
    assert total(samples, REQUESTS, route="unmatched") >= 990


def test_503s_while_redis_is_away_are_counted_by_kind(metrics_replica, valkey):
    replica, port = metrics_replica()
    browser = requests.Session()
    token = csrf_token(browser.get(f"{replica.url}/", timeout=10).text)
    assert post(replica.url, browser, "/persistMessage", message="kept", csrf_token=token) == 303
    before = scrape(port)
    valkey.stop()
    answered = [browser.get(f"{replica.url}/", timeout=30).status_code for _ in range(8)]
    assert answered == [503] * 8
    changed = delta(before, scrape(port))
    errors = total(changed, "messageapp_redis_errors_total")
    fast = value(changed, "messageapp_fail_fast_responses_total")
    # Each worker spends its retries once, then refuses at once (trying again once a cool-down
    # has passed): one failed Redis call or one refusal per 503.
    assert errors + fast == 8
    assert errors >= 1 and fast >= 1
    assert total(changed, "messageapp_redis_errors_total", kind="connection") == errors
    labels = {"route": "/", "method": "GET", "status": "503"}
    assert value(changed, REQUESTS, **labels) == 8
    # Readiness asks through the same circuit and answers 200 either way: no 503 to count (the
    # counter and its alarm said "503s" and counted these too; found by review).
    before_probes = scrape(port)
    probes = [browser.get(f"{replica.url}/readyz", timeout=30) for _ in range(8)]
    assert [(p.status_code, p.json()["redis"]) for p in probes] == [(200, "unavailable")] * 8
    after_probes = delta(before_probes, scrape(port))
    assert value(after_probes, "messageapp_fail_fast_responses_total") == 0
