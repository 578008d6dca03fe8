"""Redis frozen under load (SIGSTOP: it accepts connections and never answers, as a dead
primary's address does before DNS moves), against one pod as deployed: the repo's nginx.conf in
front of gunicorn's two workers, probed as Kubernetes probes it (k8s/deployment.yaml: a 3 s
timeout for liveness and readiness).

What must hold (issue 19, item 7): no probe fails, so no pod is unrouted or restarted (every
pod shares Redis: they would all go at once); page views get their 503 quickly once the first
two seconds have passed; pages are back within two seconds of Redis answering again.
"""

from __future__ import annotations

import http.client
import os
import signal
import statistics
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import requests

from localservers.nginx import Nginx
from tests.support import csrf_token

PROBE_TIMEOUT = 3.0  # k8s/deployment.yaml: timeoutSeconds of the liveness and readiness probes
PROBE_WITHIN = 1.0  # what every probe must answer within
USERS = 20
LOAD_PROCESSES = 2  # the users' requests in processes of their own: no GIL shared with probes
NORMAL, FROZEN, AFTER = 2.0, 10.0, 5.0  # seconds of each phase
Sample = tuple[float, int, float]  # (started, status, seconds)


def _users(url: str, cookies: list[str], until: float) -> list[Sample]:
    """Page views by ``cookies`` (one thread each, one request at a time), until ``until``."""
    samples: list[Sample] = []
    lock = threading.Lock()
    host, port = url.removeprefix("http://").split(":")

    def browse(cookie: str) -> None:
        while time.monotonic() < until:
            started = time.monotonic()
            conn = http.client.HTTPConnection(host, int(port), timeout=30)
            try:
                conn.request("GET", "/", headers={"Cookie": cookie})
                response = conn.getresponse()
                response.read()
                status = response.status
            except OSError:
                status = 0
            finally:
                conn.close()
            with lock:
                samples.append((started, status, time.monotonic() - started))
            if status != 200:
                time.sleep(0.05)  # a browser showing the 503 page, not a retry storm

    threads = [threading.Thread(target=browse, args=(cookie,)) for cookie in cookies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return samples


def _p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) > 1 else values[0]


def test_a_frozen_redis_fails_no_probe_and_holds_no_page_for_long(valkey, start_replica, tmp_path):
    replica = start_replica(valkey.port, "frozen-pod", WEB_CONCURRENCY="2")
    proxy = Nginx(replica.port, tmp_path / "nginx.log")
    proxy.start()
    try:
        cookies = []
        for i in range(USERS):
            browser = requests.Session()
            token = csrf_token(browser.get(f"{proxy.url}/", timeout=10).text)
            data = {"message": f"user {i}", "csrf_token": token}
            assert browser.post(f"{proxy.url}/persistMessage", data=data).status_code == 200
            cookies.append("; ".join(f"{k}={v}" for k, v in browser.cookies.items()))

        start = time.monotonic()
        frozen_at, thawed_at, end = (
            start + NORMAL,
            start + NORMAL + FROZEN,
            start + NORMAL + FROZEN + AFTER,
        )
        probes: list[tuple[str, float, int, float]] = []

        def probe() -> None:
            with requests.Session() as kubelet:
                while time.monotonic() < end:
                    for path in ("/healthz", "/readyz"):
                        started = time.monotonic()
                        try:
                            status = kubelet.get(proxy.url + path, timeout=PROBE_TIMEOUT)
                            code = status.status_code
                        except requests.RequestException:
                            code = 0
                        probes.append((path, started, code, time.monotonic() - started))
                    time.sleep(0.2)

        redis_pid = int(valkey.client().info("server")["process_id"])
        share = [cookies[i::LOAD_PROCESSES] for i in range(LOAD_PROCESSES)]
        with ProcessPoolExecutor(LOAD_PROCESSES, mp_context=get_context("spawn")) as pool:
            loads = [pool.submit(_users, proxy.url, part, end) for part in share]
            prober = threading.Thread(target=probe)
            prober.start()
            try:
                time.sleep(max(0.0, frozen_at - time.monotonic()))
                os.kill(redis_pid, signal.SIGSTOP)
                time.sleep(max(0.0, thawed_at - time.monotonic()))
            finally:
                os.kill(redis_pid, signal.SIGCONT)
            prober.join(60)
            samples = [sample for load in loads for sample in load.result(timeout=120)]
    finally:
        proxy.stop()

    slow_probes = [p for p in probes if p[2] != 200 or p[3] > PROBE_WITHIN]
    frozen = [s for s in samples if frozen_at + 2 <= s[0] and s[0] + s[2] <= thawed_at]
    thawed = [s for s in samples if s[0] >= thawed_at + 2]
    first_200 = min((s[0] + s[2] for s in samples if s[0] >= thawed_at and s[1] == 200), default=0)
    print(
        f"\nfrozen Redis: {len(probes)} probes, slowest {max(p[3] for p in probes):.2f}s, "
        f"{len(slow_probes)} failed or over {PROBE_WITHIN}s; page views while frozen (after "
        f"2 s): {len(frozen)}, statuses {sorted({s[1] for s in frozen})}, p99 "
        f"{_p99([s[2] for s in frozen]):.2f}s; first 200 {first_200 - thawed_at:.2f}s after "
        f"SIGCONT; {len(thawed)} page views from 2 s after, "
        f"statuses {sorted({s[1] for s in thawed})}"
    )
    assert not slow_probes, slow_probes
    assert frozen and {s[1] for s in frozen} == {503}
    assert _p99([s[2] for s in frozen]) < 1.5
    assert thawed and {s[1] for s in thawed} == {200}
