"""The pod's metrics are reachable where the scrapers look: at the pod's address.

gunicorn runs with the pod's own environment (k8s/config.env, the ConfigMap, and the Deployment's
env) in a network namespace the test creates, as a pod has one of its own, joined to the test's
by a veth pair; the test scrapes it from outside, at the namespace's address, as Prometheus or
the CloudWatch agent would (the annotations, the PodMonitor and the NetworkPolicy all point
there). Nothing leaves the machine: the namespace's only route is the veth pair.
"""

from __future__ import annotations

import ipaddress
import os
import random
import re
import secrets
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import requests
import yaml

from localservers.gunicorn import Gunicorn
from localservers.ports import listening_sockets, socket_inodes
from localservers.waits import wait_until
from tests.support import REPO_ROOT, SECRET

K8S = REPO_ROOT / "k8s"


@dataclass
class PodNetwork:
    namespace: str
    address: str  # the pod's address, inside the namespace


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture
def pod_network() -> Iterator[PodNetwork]:
    """A network namespace with one veth pair to the test's: a /30 of 198.18.0.0/15 (RFC 2544's
    benchmarking range, which no real network routes), picked at random per run."""
    if shutil.which("ip") is None:
        pytest.skip("iproute2 is not installed (apt-get install iproute2)")
    if os.geteuid() != 0:
        pytest.skip("creating a network namespace needs root")
    tag = secrets.token_hex(4)
    namespace, outside, inside = f"pod-{tag}", f"vo{tag}", f"vi{tag}"
    subnet = ipaddress.ip_network("198.18.0.0/15")
    base = subnet.network_address + 4 * random.randrange(subnet.num_addresses // 4)  # noqa: S311
    host, pod = f"{base + 1}", f"{base + 2}"
    _ip("netns", "add", namespace)
    try:
        _ip("link", "add", outside, "type", "veth", "peer", "name", inside, "netns", namespace)
        _ip("addr", "add", f"{host}/30", "dev", outside)
        _ip("link", "set", outside, "up")
        for args in (("addr", "add", f"{pod}/30", "dev", inside), ("link", "set", inside, "up")):
            _ip("-n", namespace, *args)
        _ip("-n", namespace, "link", "set", "lo", "up")
        yield PodNetwork(namespace, pod)
    finally:
        # Deleting the namespace deletes its end of the pair, and so the pair.
        subprocess.run(["ip", "netns", "del", namespace], check=False, timeout=30)


def pod_environment() -> dict[str, str]:
    """The app container's environment as the Deployment gives it: the ConfigMap's variables
    and the Deployment's own env (a Secret's SECRET_KEY, the pod name as REPLICA_NAME)."""
    env = {}
    for line in (K8S / "config.env").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, value = line.partition("=")
            env[name] = value
    deployment = yaml.safe_load((K8S / "deployment.yaml").read_text())
    (app,) = deployment["spec"]["template"]["spec"]["containers"]
    given = {"SECRET_KEY": SECRET, "REPLICA_NAME": "message-app-7d9f-x2x4q"}
    for variable in app["env"]:
        if variable["name"] in given:
            env[variable["name"]] = given[variable["name"]]
        else:  # only an optional Secret key may be left out (a Redis without AUTH)
            assert variable["valueFrom"]["secretKeyRef"]["optional"], variable
    # The one change: the cache's placeholder name never resolves (by design, see config.env);
    # an address where nothing listens keeps the lookup inside the namespace. The app starts
    # without its cache (503 pages), and the metrics do not need it.
    env["REDIS_HOST"] = "127.0.0.1"
    return {"PATH": os.environ["PATH"], **env}


def test_metrics_answer_at_the_pods_address_with_the_manifests_settings(pod_network, tmp_path):
    env = pod_environment()
    app_port = int(env["GUNICORN_BIND"].rsplit(":", 1)[1])
    metrics_port = int(env["METRICS_PORT"])
    netns = ("ip", "netns", "exec", pod_network.namespace)
    # As the container runs it: no --bind, so GUNICORN_BIND's loopback address.
    pod = Gunicorn("pod", env, tmp_path / "gunicorn.log", prefix=netns, bind=None)
    pod.spawn()
    assert pod.process is not None
    master = pod.process.pid
    try:

        def up() -> bool:
            assert pod.process.poll() is None, pod.log()
            listening = set(listening_sockets(master))
            workers = len(pod.worker_pids())
            return {app_port, metrics_port} <= listening and workers == int(env["WEB_CONCURRENCY"])

        wait_until(up, 60, "gunicorn in the pod's namespace")
        # One request inside the pod, as the kubelet's probe (through nginx) would make.
        probe = (
            "import urllib.request; "
            f"urllib.request.urlopen('http://127.0.0.1:{app_port}/healthz', timeout=10)"
        )
        subprocess.run(
            [*netns, sys.executable, "-c", probe],
            check=True,
            timeout=30,
        )
        url = f"http://{pod_network.address}:{metrics_port}/metrics"
        try:
            scraped = requests.get(url, timeout=5)
        except requests.ConnectionError as exc:
            listening = listening_sockets(master)
            raise AssertionError(f"{url} refused; the pod listens on {listening}") from exc
        assert scraped.status_code == 200
        # The workers' counts, summed by the master: the probe's request.
        healthz = (
            r'messageapp_http_request_duration_seconds_count\{[^}]*route="/healthz"[^}]*\} (\S+)'
        )
        assert re.findall(healthz, scraped.text) == ["1.0"]
        address, listener = listening_sockets(master)[metrics_port]
        assert address in ("0.0.0.0", "::")  # noqa: S104 - every address of the pod
        # The app port stays on loopback, behind the nginx sidecar (not started here).
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((pod_network.address, app_port), timeout=5).close()
        # The workers do not hold the metrics listener (they would keep the port after the
        # master died, and could accept on it).
        for worker in pod.worker_pids():
            assert listener not in socket_inodes(worker), worker
    finally:
        pod.stop()
