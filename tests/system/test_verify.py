"""`python -m ops.verify` against real replicas and against a stand-in Kubernetes API.

HTTP part: one real Valkey, three gunicorn replicas of the app and haproxy round-robin in front,
the same shape as pods behind a load balancer. The failing case uses replicas that each keep
sessions in their own Redis database, which is exactly the bug the command exists to catch.

Kubernetes part: a small HTTP server answers the two API paths the command calls with JSON in
tests/fixtures/k8s-api/ (hand-written in the API's response format: a Service with a Classic ELB
hostname, the same Service before its load balancer exists, the ClusterIP Service and the Ingress
with the ALB's hostname that the ALB edge (k8s/components/alb) makes, and five pods of which
three are ready, one fails its readiness probe and one is terminating), reached through a
kubeconfig in tmp_path.
"""

from __future__ import annotations

import copy
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from kubernetes.client import (
    V1Ingress,
    V1IngressLoadBalancerIngress,
    V1IngressLoadBalancerStatus,
    V1IngressSpec,
    V1IngressStatus,
    V1IngressTLS,
    V1LoadBalancerIngress,
    V1LoadBalancerStatus,
    V1ObjectMeta,
    V1Service,
    V1ServicePort,
    V1ServiceSpec,
    V1ServiceStatus,
)

from localservers.gunicorn import Gunicorn, start_gunicorn, stop_together
from localservers.haproxy import Haproxy
from localservers.ports import free_port
from localservers.valkey import Valkey
from ops.verify import Run, Step, _ingress_url, _service_url
from tests.support import FIXTURES, REPO_ROOT, replica_env, session_keys

from .tls import make_certificates

NAMESPACE = "shop"  # the kubeconfig context's namespace in these tests


def _fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / "k8s-api" / name).read_text())


READY_PODS = sorted(
    p["metadata"]["name"]
    for p in _fixture("pods.json")["items"]
    if "deletionTimestamp" not in p["metadata"]
    and any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"]["conditions"])
)


def _start_cluster(
    tmp: Path,
    valkey: Valkey,
    names: list[str],
    redis_dbs: list[int],
    mode: str = "http",
    **extra_env: str,
) -> Iterator[tuple[str, list[str]]]:
    """Start gunicorn replicas and haproxy (balancing by request, or by connection with
    mode tcp); yield the proxy URL and the replicas' URLs."""
    replicas: list[Gunicorn] = []
    proxy: Haproxy | None = None
    try:
        for name, db in zip(names, redis_dbs, strict=True):
            # The shared replica settings (rate limits off, a metrics port of its own).
            env = replica_env(
                valkey.port,
                name,
                REDIS_DB=str(db),
                WEB_CONCURRENCY="1",
                LOG_LEVEL="WARNING",
                **extra_env,
            )
            replicas.append(start_gunicorn(name, env, tmp / f"{name}.log"))
        proxy = Haproxy(tmp, {r.name: r.port for r in replicas}, mode)
        proxy.start()
        yield proxy.url, [r.url for r in replicas]
    finally:
        if proxy is not None:
            proxy.stop()
        stop_together(replicas)


@pytest.fixture(scope="module")
def shared(
    shared_valkey: Valkey, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, list[str]]]:
    """Three replicas sharing one Redis database, named like the fixture's ready pods, behind a
    balancer that picks a replica per connection, as the default edge's NLB does (verify
    keeping its connection alive met one pod only, and failed: found by review)."""
    tmp = tmp_path_factory.mktemp("shared")
    yield from _start_cluster(tmp, shared_valkey, READY_PODS, [0, 0, 0], "tcp")


@pytest.fixture(scope="module")
def split(
    shared_valkey: Valkey, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, list[str]]]:
    """Three replicas that each keep sessions in their own database: sessions do not survive."""
    tmp = tmp_path_factory.mktemp("split")
    yield from _start_cluster(tmp, shared_valkey, ["split-a", "split-b", "split-c"], [1, 2, 3])


@pytest.fixture(scope="module")
def limited(
    shared_valkey: Valkey, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, list[str]]]:
    """Two replicas sharing sessions whose save limit refuses a second save within a second."""
    tmp = tmp_path_factory.mktemp("limited")
    yield from _start_cluster(
        tmp, shared_valkey, ["limited-a", "limited-b"], [4, 4], RATE_LIMIT_SAVES="1/second"
    )


def _verify(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ops.verify", *args],
        cwd=REPO_ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _table_rows(stdout: str) -> list[list[str]]:
    return [line.split() for line in stdout.splitlines() if re.match(r"\d+\s", line)]


def test_passes_when_replicas_share_sessions(
    shared: tuple[str, list[str]], shared_valkey: Valkey
) -> None:
    proxy, _ = shared
    result = _verify("--url", proxy, "--requests", "20", "--timeout", "30")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = _table_rows(result.stdout)
    assert [int(r[0]) for r in rows] == list(range(1, 21))
    assert all(r[1] in READY_PODS and r[2] in READY_PODS and r[-1] == "ok" for r in rows)
    assert [r[3] for r in rows] == [f"{n}/{n}" for n in range(1, 21)]
    served = re.search(r"Replicas that served it: (\d+)", result.stdout)
    assert served and int(served.group(1)) == 3, "round-robin reaches all three"
    assert "HTTP requests: 41 in one session" in result.stdout
    assert "missing: 0" in result.stdout and "PASS" in result.stdout
    # The command destroys its session: nothing of it is left in Redis.
    assert "Session destroyed at the end: yes" in result.stdout
    client = shared_valkey.client(db=0)
    assert session_keys(client) == []


def test_a_rate_limited_save_is_sent_again_after_retry_after(
    limited: tuple[str, list[str]],
) -> None:
    # One save a second is allowed and a save and its page take far less than that here, so
    # every save after the first is refused with 429 at least once before it gets through.
    proxy, _ = limited
    result = _verify("--url", proxy, "--requests", "4", "--timeout", "60")
    assert result.returncode == 0, result.stdout + result.stderr
    assert [r[-1] for r in _table_rows(result.stdout)] == ["ok"] * 4
    assert "Messages saved: 4, listed on the last page: 4, missing: 0" in result.stdout
    assert "rate limited by the app, waiting" in result.stderr


def test_fails_when_replicas_do_not_share_sessions(split: tuple[str, list[str]]) -> None:
    proxy, _ = split
    result = _verify("--url", proxy, "--requests", "20", "--timeout", "30")
    assert result.returncode == 1, result.stdout + result.stderr
    assert any(r[-1] != "ok" for r in _table_rows(result.stdout))
    assert "FAIL: messages were missing or pages failed" in result.stdout


def test_fails_when_only_one_replica_answers(shared: tuple[str, list[str]]) -> None:
    """Every message is kept, but a single replica proves nothing about sharing."""
    _, replicas = shared
    result = _verify("--url", replicas[0], "--requests", "4", "--timeout", "30")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "missing: 0" in result.stdout
    assert "FAIL: fewer than 2 replicas served the session" in result.stdout


def test_answers_that_name_no_replica_and_a_failed_first_page_do_not_pass() -> None:
    """An answer without the replica's name (a load balancer's or a proxy's own error page)
    counts as no replica, and the first page must have been served: else one real pod and one
    error page passed (found by review)."""

    def run(replicas: dict[str, int], first_status: int) -> Run:
        steps = [Step(1, "pod-a", "pod-a", 1, 1, True)]
        return Run("u", steps, Counter(replicas), ["m"], ["m"], first_status=first_status)

    assert run({"pod-a": 2, "pod-b": 1}, 200).passed(1)
    assert not run({"pod-a": 2, "?": 1}, 200).passed(1)
    assert not run({"pod-a": 2, "pod-b": 1}, 502).passed(1)


def test_a_certificate_that_does_not_name_the_address_exits_3_at_once(tmp_path: Path) -> None:
    """An https address whose certificate names something else (the load balancer's own name,
    when the certificate is for the operator's domain) will not start to verify by waiting: one
    attempt, then exit 3 saying so, instead of retrying until --timeout (the pipeline spent its
    600 s so on every HTTPS deploy; found by review)."""
    ca, cert, key = make_certificates(tmp_path)  # for 127.0.0.1 only
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    handshakes: list[str] = []

    class Healthy(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    class TlsServer(ThreadingHTTPServer):
        def get_request(self) -> tuple[Any, Any]:
            conn, address = super().get_request()
            handshakes.append(address[0])
            return context.wrap_socket(
                conn, server_side=True, do_handshake_on_connect=False
            ), address

        def handle_error(self, request: Any, client_address: Any) -> None:
            pass  # the client's refused handshake

    server = TlsServer(("127.0.0.1", 0), Healthy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        trusted = {"REQUESTS_CA_BUNDLE": str(ca)}
        named = _verify("--url", f"https://127.0.0.1:{port}", "--timeout", "5", env=trusted)
        assert "does not verify" not in named.stderr  # the same server, named by its address
        handshakes.clear()
        result = _verify("--url", f"https://localhost:{port}", "--timeout", "60", env=trusted)
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == 3, result.stdout + result.stderr
    assert f"https://localhost:{port}: its TLS certificate does not verify" in result.stderr
    assert len(handshakes) == 1


def test_a_handshake_cut_off_is_tried_again_until_the_timeout() -> None:
    """A TLS handshake the server cuts off (a load balancer still coming up) may pass on the
    next try: only a certificate that does not verify stops verify at once."""
    accepted: list[int] = []
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(0.2)
        stop = threading.Event()

        def cut_off() -> None:
            while not stop.is_set():
                try:
                    conn, _ = server.accept()
                except TimeoutError:
                    continue
                accepted.append(1)
                conn.close()  # before any handshake byte

        thread = threading.Thread(target=cut_off, daemon=True)
        thread.start()
        try:
            port = server.getsockname()[1]
            result = _verify("--url", f"https://127.0.0.1:{port}", "--timeout", "3")
        finally:
            stop.set()
            thread.join(timeout=5)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "did not answer 200 in time" in result.stderr
    assert "does not verify" not in result.stderr
    assert len(accepted) >= 2


def test_unreachable_url_exits_3() -> None:
    result = _verify("--url", f"http://127.0.0.1:{free_port()}", "--timeout", "1")
    assert result.returncode == 3
    assert "did not answer 200 in time" in result.stderr


@pytest.mark.parametrize(
    ("ports", "ingress", "url"),
    [
        ([("http", 80)], {"hostname": "lb.example"}, "http://lb.example"),
        ([("http", 8080)], {"ip": "192.0.2.7"}, "http://192.0.2.7:8080"),
        ([("https", 443)], {"hostname": "lb.example"}, "https://lb.example"),
        ([("https", 443), ("http", 80)], {"ip": "2001:db8::1"}, "http://[2001:db8::1]"),
        ([("http", 80)], None, None),
    ],
)
def test_service_url_follows_the_load_balancer_ports(
    ports: list[tuple[str, int]], ingress: dict[str, str] | None, url: str | None
) -> None:
    service = V1Service(
        spec=V1ServiceSpec(ports=[V1ServicePort(name=n, port=p) for n, p in ports]),
        status=V1ServiceStatus(
            load_balancer=V1LoadBalancerStatus(
                ingress=[V1LoadBalancerIngress(**ingress)] if ingress else None
            )
        ),
    )
    assert _service_url(service) == url


@pytest.mark.parametrize(
    ("listen_ports", "tls", "address", "url"),
    [
        ('[{"HTTP": 80}]', False, {"hostname": "alb.example"}, "http://alb.example"),
        (
            '[{"HTTP": 80}, {"HTTPS": 443}]',
            False,
            {"hostname": "alb.example"},
            "https://alb.example",
        ),
        ('[{"HTTPS": 8443}]', False, {"hostname": "alb.example"}, "https://alb.example:8443"),
        ('[{"HTTP": 8080}]', False, {"ip": "192.0.2.7"}, "http://192.0.2.7:8080"),
        (None, True, {"hostname": "alb.example"}, "https://alb.example"),
        (None, False, {"ip": "2001:db8::1"}, "http://[2001:db8::1]"),
        ("not json", False, {"hostname": "alb.example"}, "http://alb.example"),
        ('[{"HTTP": 80}]', False, None, None),
    ],
)
def test_ingress_url_follows_the_albs_listeners(
    listen_ports: str | None, tls: bool, address: dict[str, str] | None, url: str | None
) -> None:
    """The listen-ports annotation (k8s/components/alb, alb-https) decides the scheme and port;
    without it a TLS section means https on 443, as for any Ingress."""
    annotations = {"alb.ingress.kubernetes.io/listen-ports": listen_ports} if listen_ports else None
    ingress = V1Ingress(
        metadata=V1ObjectMeta(name="message-app", annotations=annotations),
        spec=V1IngressSpec(tls=[V1IngressTLS(hosts=["app.example"])] if tls else None),
        status=V1IngressStatus(
            load_balancer=V1IngressLoadBalancerStatus(
                ingress=[V1IngressLoadBalancerIngress(**address)] if address else None
            )
        ),
    )
    assert _ingress_url(ingress) == url


@pytest.mark.parametrize(
    "args",
    [
        ["--requests", "1"],
        ["--timeout", "0"],
        ["--url", "http://127.0.0.1:1", "--resolve-only"],
        ["--bogus"],
    ],
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    assert _verify(*args).returncode == 2


class _FakeApi(ThreadingHTTPServer):
    """Answers GET service and pod-list calls for one namespace; records what it was asked."""

    def __init__(self, service: dict[str, Any], pods: dict[str, Any]) -> None:
        super().__init__(("127.0.0.1", 0), _FakeApiHandler)
        self.service = service
        self.pods = pods
        self.seen: list[tuple[str, str | None]] = []
        # Answer this many Service lookups with `pending` (no load balancer yet) first.
        self.pending: dict[str, Any] | None = None
        self.pending_lookups = 0
        # The Ingress of the same name, if any (the ALB edge).
        self.ingress: dict[str, Any] | None = None


class _FakeApiHandler(BaseHTTPRequestHandler):
    server: _FakeApi

    def do_GET(self) -> None:
        self.server.seen.append((self.path, self.headers.get("Authorization")))
        url = urlsplit(self.path)
        name = self.server.service["metadata"]["name"]
        if url.path == f"/api/v1/namespaces/{NAMESPACE}/services/{name}":
            if self.server.pending is not None and self.server.pending_lookups > 0:
                self.server.pending_lookups -= 1
                self._reply(200, self.server.pending)
            else:
                self._reply(200, self.server.service)
        elif (
            url.path == f"/apis/networking.k8s.io/v1/namespaces/{NAMESPACE}/ingresses/{name}"
            and self.server.ingress is not None
        ):
            self._reply(200, self.server.ingress)
        elif url.path == f"/api/v1/namespaces/{NAMESPACE}/pods":
            selector = parse_qs(url.query).get("labelSelector", [""])[0]
            wanted = dict(pair.split("=", 1) for pair in selector.split(","))
            items = [
                p
                for p in self.server.pods["items"]
                if wanted.items() <= p["metadata"]["labels"].items()
            ]
            self._reply(200, {**self.server.pods, "items": items})
        else:
            status = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure"}
            self._reply(404, {**status, "reason": "NotFound", "code": 404})

    def _reply(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: pytest shows the assertions, not an access log."""


@pytest.fixture
def fake_api(tmp_path: Path) -> Iterator[tuple[_FakeApi, dict[str, str]]]:
    """The stand-in API server and the environment pointing kubeconfig at it."""
    server = _FakeApi(_fixture("service.json"), _fixture("pods.json"))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "fake",
                        "cluster": {"server": f"http://127.0.0.1:{server.server_port}"},
                    }
                ],
                "users": [{"name": "tester", "user": {"token": "test-token"}}],
                "contexts": [
                    {
                        "name": "fake",
                        "context": {"cluster": "fake", "user": "tester", "namespace": NAMESPACE},
                    }
                ],
                "current-context": "fake",
            }
        )
    )
    try:
        yield server, {"KUBECONFIG": str(kubeconfig)}
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_resolve_only_finds_the_load_balancer_and_the_ready_pods(
    fake_api: tuple[_FakeApi, dict[str, str]],
) -> None:
    server, env = fake_api
    result = _verify("--resolve-only", "--timeout", "10", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    hostname = server.service["status"]["loadBalancer"]["ingress"][0]["hostname"]
    assert f"URL: http://{hostname}\n" in result.stdout, "port 80 is implied"
    assert f"Ready pods: {', '.join(READY_PODS)}\n" in result.stdout
    assert len(READY_PODS) == 3, "the not-ready and the terminating pod are left out"
    paths = [urlsplit(path) for path, _ in server.seen]
    assert paths[0].path == f"/api/v1/namespaces/{NAMESPACE}/services/message-app"
    assert paths[1].path == f"/api/v1/namespaces/{NAMESPACE}/pods"
    assert parse_qs(paths[1].query)["labelSelector"] == [
        "app.kubernetes.io/instance=message-app,app.kubernetes.io/name=message-app"
    ]
    assert {auth for _, auth in server.seen} == {"Bearer test-token"}


def test_missing_service_exits_3(fake_api: tuple[_FakeApi, dict[str, str]]) -> None:
    server, env = fake_api
    result = _verify("--namespace", "other", "--resolve-only", "--timeout", "10", env=env)
    assert result.returncode == 3
    assert "service other/message-app not found" in result.stderr
    assert urlsplit(server.seen[0][0]).path == "/api/v1/namespaces/other/services/message-app"


def test_gives_up_when_the_load_balancer_never_comes(
    fake_api: tuple[_FakeApi, dict[str, str]],
) -> None:
    server, env = fake_api
    server.service = _fixture("service-pending.json")
    result = _verify("--timeout", "3", env=env)
    assert result.returncode == 3
    assert "not ready in time (load balancer: no address yet; ready pods: 3/5)" in result.stderr


def test_waits_for_the_load_balancer_to_get_its_address(
    fake_api: tuple[_FakeApi, dict[str, str]],
) -> None:
    """Pending for two lookups, then ready: it must keep polling, not give up at once.
    The timeout is generous so that a slow start (the kubernetes import) cannot use it up."""
    server, env = fake_api
    server.pending, server.pending_lookups = _fixture("service-pending.json"), 2
    result = _verify("--resolve-only", "--timeout", "120", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr.count("waiting: load balancer: no address yet") == 2
    lookups = [p for p, _ in server.seen if urlsplit(p).path.endswith("/services/message-app")]
    assert len(lookups) == 3
    hostname = server.service["status"]["loadBalancer"]["ingress"][0]["hostname"]
    assert f"URL: http://{hostname}\n" in result.stdout


def test_full_run_through_the_kubernetes_lookup(
    fake_api: tuple[_FakeApi, dict[str, str]], shared: tuple[str, list[str]]
) -> None:
    """The recorded Service, with its ingress pointed at the local proxy, as an LB on 127.0.0.1."""
    server, env = fake_api
    proxy = urlsplit(shared[0])
    service = copy.deepcopy(server.service)
    service["status"]["loadBalancer"]["ingress"] = [{"ip": proxy.hostname, "ipMode": "VIP"}]
    service["spec"]["ports"][0]["port"] = proxy.port
    server.service = service
    result = _verify("--requests", "20", "--timeout", "30", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"URL: {shared[0]}" in result.stdout
    assert f"Ready pods behind the Service: {', '.join(READY_PODS)}" in result.stdout
    assert "not a ready pod" not in result.stdout and "not seen" not in result.stdout
    assert "PASS" in result.stdout


def _alb(server: _FakeApi, listen_ports: str | None = None) -> str:
    """The ALB edge's objects on the stand-in API: the ClusterIP Service and the Ingress (its
    listen-ports annotation replaced when given); returns the ALB's hostname."""
    server.service = _fixture("service-alb.json")
    server.ingress = _fixture("ingress-alb.json")
    if listen_ports is not None:
        annotations = server.ingress["metadata"]["annotations"]
        annotations["alb.ingress.kubernetes.io/listen-ports"] = listen_ports
    return str(server.ingress["status"]["loadBalancer"]["ingress"][0]["hostname"])


def test_resolve_only_finds_the_albs_address_on_the_ingress(
    fake_api: tuple[_FakeApi, dict[str, str]],
) -> None:
    """With the ALB edge the Service is ClusterIP and never gets a load balancer's address: the
    Ingress of the same name has it. HTTP only (no certificate): http, port 80 implied."""
    server, env = fake_api
    hostname = _alb(server)
    result = _verify("--resolve-only", "--timeout", "10", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"URL: http://{hostname}\n" in result.stdout
    assert f"Ready pods: {', '.join(READY_PODS)}\n" in result.stdout
    paths = [urlsplit(path).path for path, _ in server.seen]
    assert f"/apis/networking.k8s.io/v1/namespaces/{NAMESPACE}/ingresses/message-app" in paths
    assert "certificate" not in result.stderr


def test_an_ingress_listening_on_443_is_reached_over_https_with_one_warning(
    fake_api: tuple[_FakeApi, dict[str, str]],
) -> None:
    """k8s/components/alb-https adds HTTPS on 443 (port 80 only redirects): the URL is https.
    The certificate names the operator's domain, not the ALB's hostname, so verify says once
    how to pass that domain instead (it never turns the certificate check off)."""
    server, env = fake_api
    hostname = _alb(server, '[{"HTTP": 80}, {"HTTPS": 443}]')
    result = _verify("--resolve-only", "--timeout", "10", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"URL: https://{hostname}\n" in result.stdout
    assert result.stderr.count("--url https://YOUR-DOMAIN") == 1, result.stderr
    assert "certificate" in result.stderr


def test_a_clusterip_service_without_an_ingress_exits_3_at_once(
    fake_api: tuple[_FakeApi, dict[str, str]],
) -> None:
    """No load balancer can ever appear: say so rather than wait out --timeout."""
    server, env = fake_api
    server.service = _fixture("service-alb.json")
    result = _verify("--resolve-only", "--timeout", "60", env=env)
    assert result.returncode == 3
    assert (
        f"service {NAMESPACE}/message-app is of type ClusterIP and there is no ingress "
        f"{NAMESPACE}/message-app"
    ) in result.stderr
    assert "waiting:" not in result.stderr


def test_full_run_through_the_ingress_lookup(
    fake_api: tuple[_FakeApi, dict[str, str]], shared: tuple[str, list[str]]
) -> None:
    """The recorded Ingress, its ALB played by the local proxy (its address and listen port)."""
    server, env = fake_api
    proxy = urlsplit(shared[0])
    _alb(server, json.dumps([{"HTTP": proxy.port}]))
    assert server.ingress is not None
    server.ingress["status"]["loadBalancer"]["ingress"] = [{"ip": proxy.hostname}]
    result = _verify("--requests", "6", "--timeout", "30", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"URL: {shared[0]}" in result.stdout
    assert "PASS" in result.stdout
