"""A rolling restart under load loses nothing: three pods (gunicorn with the repo's nginx.conf in
front, as deployed) behind haproxy on loopback, load running throughout, each pod replaced in
turn the way the Deployment's rollout does it: out of the load balancer, the preStop pause
(scaled down), SIGTERM to gunicorn (it drains in-flight requests), then to the nginx sidecar
once gunicorn has exited, a new pod started, back into the load balancer.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from localservers.gunicorn import Gunicorn
from localservers.haproxy import Haproxy
from localservers.nginx import Nginx
from localservers.waits import wait_until
from tests.support import csrf_token, listed_messages

NAMES = ("replica-a", "replica-b", "replica-c")
# The pod's preStop sleep is 10 s (the endpoint removal must reach the load balancer); haproxy
# here stops routing the moment it is told, so a second stands in for it.
PRESTOP_SECONDS = 1.0
CLIENTS = 4


@dataclass
class Load:
    """Visitors browsing and saving through the load balancer; every outcome counted."""

    base: str
    statuses: Counter[int] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    saved: dict[int, list[str]] = field(default_factory=dict)
    browsers: dict[int, requests.Session] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)

    def visitor(self, index: int) -> None:
        browser = self.browsers[index] = requests.Session()
        token = ""
        saved = self.saved[index] = []
        i = 0
        while not self.stop.is_set():
            i += 1
            try:
                if token and i % 4 == 0:
                    text = f"visitor {index} message {i}"
                    response = browser.post(
                        f"{self.base}/persistMessage",
                        data={"message": text, "csrf_token": token},
                        allow_redirects=False,
                        timeout=15,
                    )
                    if response.status_code == 303:
                        saved.append(text)
                else:
                    response = browser.get(f"{self.base}/", timeout=15)
                    if response.status_code == 200:
                        token = csrf_token(response.text)
                self.statuses[response.status_code] += 1
            except requests.RequestException as exc:
                self.errors.append(repr(exc))

    @property
    def requests(self) -> int:
        return sum(self.statuses.values()) + len(self.errors)


@dataclass
class Pod:
    app: Gunicorn
    proxy: Nginx

    def stop(self) -> int:
        code = self.app.stop()  # SIGTERM: gunicorn drains, then exits
        self.proxy.stop(signal.SIGTERM)  # native sidecar: terminated after the app container
        return code


@pytest.fixture
def pods(valkey, start_replica, tmp_path: Path) -> Iterator[Callable[[str], Pod]]:
    started: list[Pod] = []

    def start(name: str) -> Pod:
        # Four visitors saving for half a minute pass the default 500 messages per session.
        app = start_replica(valkey.port, name, MESSAGES_MAX_PER_SESSION="100000")
        proxy = Nginx(app.port, tmp_path / f"nginx-{name}.log")
        proxy.start()
        started.append(Pod(app, proxy))
        return started[-1]

    yield start
    for pod in started:
        pod.proxy.stop()


@pytest.fixture
def balanced(pods, tmp_path: Path) -> Iterator[tuple[Haproxy, list[Pod]]]:
    running = [pods(name) for name in NAMES]
    proxy = Haproxy(
        tmp_path, {name: pod.proxy.port for name, pod in zip(NAMES, running, strict=True)}
    )
    try:
        proxy.start()
        yield proxy, running
    finally:
        proxy.stop()


def test_a_rolling_restart_under_load_fails_no_request(balanced, pods) -> None:
    proxy, running = balanced
    load = Load(proxy.url)
    visitors = [threading.Thread(target=load.visitor, args=(i,)) for i in range(CLIENTS)]
    for thread in visitors:
        thread.start()
    try:
        wait_until(lambda: load.statuses[303] >= 10, 30, "load with saves under way")
        for index, name in enumerate(NAMES):
            # Out of the load balancer: no new requests; those in flight finish.
            assert proxy.command(f"set server replicas/{name} state maint") == "\n"
            time.sleep(PRESTOP_SECONDS)  # the preStop pause, by design a fixed wait
            assert running[index].stop() == 0  # a clean exit: gunicorn drained
            new = running[index] = pods(f"{name}-new")
            port = new.proxy.port
            reply = proxy.command(f"set server replicas/{name} addr 127.0.0.1 port {port}")
            assert "changed" in reply, reply
            assert proxy.command(f"set server replicas/{name} state ready") == "\n"
            served = load.statuses[200]
            wait_until(lambda s=served: load.statuses[200] > s + 20, 30, "load after the swap")
    finally:
        load.stop.set()
        for thread in visitors:
            thread.join(30)

    print(
        f"\nrollout: {load.requests} requests during the rolling restart of 3 pods "
        f"({dict(load.statuses)}), {len(load.errors)} connection errors, "
        f"{sum(len(s) for s in load.saved.values())} saves"
    )
    assert load.errors == []
    assert set(load.statuses) <= {200, 303}, dict(load.statuses)
    # Every acknowledged save is listed, in order, on its visitor's page.
    for index, saved in load.saved.items():
        page = load.browsers[index].get(f"{proxy.url}/", timeout=10).text
        assert saved and listed_messages(page) == saved, index
