"""Prove, after a deploy, that one browser session survives being spread over replicas.

    python -m ops.verify [--namespace NS] [--service message-app] [--requests 20] [--timeout 300]
    python -m ops.verify --url http://HOST[:PORT]      # any deployment, no Kubernetes lookup
    python -m ops.verify --resolve-only                # print the address and ready pods, stop

The point of the app is that any replica can serve any request because the session lives in Redis,
so the check is behavioural: keep one cookie jar, save a message per step, and require every page to
list all messages saved so far, while the load balancer spreads the requests. It passes only when at
least two different replicas (pods: REPLICA_NAME is the pod name) took part and nothing was missing.

The address is the Service's load balancer (type LoadBalancer: the NLB), or else that of the
Ingress of the same name (the ALB edge, k8s/components/alb, where the Service is ClusterIP); https
when that load balancer listens for HTTPS.

Exit status: 0 passed, 1 the check failed, 2 usage error, 3 could not reach the cluster, the
load balancer or the app within --timeout.
"""

from __future__ import annotations

import argparse
import json
import secrets
import ssl
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import requests

from ops.cli import EXIT_FAILED, EXIT_PASSED, EXIT_UNREACHABLE, number
from ops.page import Page, parse_page

# One slow answer must not hang the run; an ELB answers well within this.
REQUEST_TIMEOUT_SECONDS = 10.0
POLL_SECONDS = 2.0
IN_CLUSTER_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
# The ALB's listeners (k8s/components/alb, ../alb-https): a JSON list like [{"HTTP": 80}].
ALB_LISTEN_PORTS = "alb.ingress.kubernetes.io/listen-ports"


class Unreachable(Exception):
    """The cluster, the load balancer or the app did not answer within the time budget."""


@dataclass(frozen=True)
class Target:
    """Where to send the session, and (Kubernetes mode) the pods expected to answer."""

    url: str
    ready_pods: tuple[str, ...] = ()


@dataclass
class Step:
    """One save: the POST, then the page it redirects to."""

    number: int
    saved_by: str
    page_from: str
    listed: int
    expected: int
    ok: bool
    note: str = ""


@dataclass
class Run:
    url: str
    steps: list[Step] = field(default_factory=list)
    replicas: Counter[str] = field(default_factory=Counter)
    saved: list[str] = field(default_factory=list)
    last_listed: list[str] = field(default_factory=list)
    destroyed: bool = False
    first_status: int = 0  # of the first page, before any save

    @property
    def named_replicas(self) -> set[str]:
        """The replicas that said who they are ("?": an answer that did not, such as a load
        balancer's or a proxy's own error page, is no replica)."""
        return set(self.replicas) - {"?"}

    @property
    def missing(self) -> list[str]:
        return [m for m in self.saved if m not in self.last_listed]

    def passed(self, planned: int) -> bool:
        return (
            self.first_status == 200
            and len(self.steps) == planned
            and all(s.ok for s in self.steps)
            and not self.missing
            and len(self.named_replicas) >= 2
        )


def _served_by(response: requests.Response, page: Page | None = None) -> str:
    """The replica's name from the header, else from the page (a proxy may strip headers)."""
    name = response.headers.get("X-Served-By") or (page.served_by if page else None)
    return name or "?"


def _certificate_refused(exc: BaseException) -> bool:
    """Whether the TLS check refused the server's certificate (anywhere in the chain of causes:
    requests and urllib3 wrap ssl's error), as opposed to a handshake cut off, which may pass
    on the next try."""
    seen: BaseException | None = exc
    for _ in range(10):  # a chain is a few links; bounded all the same
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = (
            seen.__cause__
            or seen.__context__
            or next((a for a in seen.args if isinstance(a, BaseException)), None)
        )
    return False


def wait_until_serving(url: str, deadline: float) -> None:
    """Poll /healthz: a fresh ELB name takes minutes to resolve and to pass its health checks."""
    last_error = "no attempt"
    while True:
        try:
            response = requests.get(f"{url}/healthz", timeout=REQUEST_TIMEOUT_SECONDS)
            if response.status_code == 200:
                return
            last_error = f"HTTP {response.status_code}"
        except requests.RequestException as exc:
            if _certificate_refused(exc):
                # The address answers, with a certificate that names something else (or that
                # no trusted authority signed): waiting will not change it.
                raise Unreachable(
                    f"{url}: its TLS certificate does not verify for this name, and waiting "
                    f"will not change that ({exc})"
                ) from exc
            last_error = type(exc).__name__
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise Unreachable(f"{url}/healthz did not answer 200 in time (last: {last_error})")
        time.sleep(min(1.0, remaining))


def run_session(url: str, saves: int, deadline: float) -> Run:
    """Drive one cookie jar through `saves` POST+GET pairs; record who served what.

    A save refused with 429 (the app's per-client save limit, e.g. a second run within the
    limit's minute) is sent again after its Retry-After, while the time budget allows."""
    run = Run(url=url)
    run_id = secrets.token_hex(3)
    with requests.Session() as session:
        # A new connection for every request: a Network Load Balancer picks a pod per
        # connection, and one kept alive (nginx keeps it up to 10 s) would show one pod only.
        session.headers["Connection"] = "close"
        first = session.get(f"{url}/", timeout=REQUEST_TIMEOUT_SECONDS)
        run.first_status = first.status_code
        page = parse_page(first.text)
        run.replicas[_served_by(first, page)] += 1
        for number in range(1, saves + 1):
            # Markup characters and a non-ASCII letter check that what comes back is the text saved.
            message = f"verify {run_id} #{number:02d} <&> ü"
            run.saved.append(message)
            try:
                step, page = _save(session, url, number, message, page, run, deadline)
            except requests.RequestException as exc:
                run.steps.append(
                    Step(number, "?", "?", 0, len(run.saved), False, f"{type(exc).__name__}")
                )
                break
            run.steps.append(step)
        run.destroyed = _destroy(session, url, page)
    return run


def _save(
    session: requests.Session,
    url: str,
    number: int,
    message: str,
    page: Page,
    run: Run,
    deadline: float,
) -> tuple[Step, Page]:
    while True:
        post = session.post(
            f"{url}/persistMessage",
            data={"message": message, "csrf_token": page.csrf_token or ""},
            allow_redirects=False,
            timeout=REQUEST_TIMEOUT_SECONDS,
        )
        saved_by = _served_by(post)
        run.replicas[saved_by] += 1
        wait = _retry_after(post)
        if post.status_code != 429 or wait is None or time.monotonic() + wait > deadline:
            break
        # Nothing was stored (a 429 stores nothing), so sending the same save again is safe.
        print(f"save {number}: rate limited by the app, waiting {wait} s", file=sys.stderr)
        time.sleep(wait)
    notes = []
    if post.status_code == 303:
        next_url = urljoin(post.url, post.headers.get("Location", "/"))
    else:
        notes.append(f"POST answered {post.status_code}")
        next_url = f"{url}/"
    get = session.get(next_url, timeout=REQUEST_TIMEOUT_SECONDS)
    new_page = parse_page(get.text)
    page_from = _served_by(get, new_page)
    run.replicas[page_from] += 1
    run.last_listed = new_page.messages
    if get.status_code != 200:
        notes.append(f"page answered {get.status_code}")
    missing = [m for m in run.saved if m not in new_page.messages]
    if missing:
        notes.append(f"missing {len(missing)}")
    elif new_page.messages != run.saved:
        notes.append("wrong order or extra messages")
    ok = not notes
    step = Step(number, saved_by, page_from, len(new_page.messages), len(run.saved), ok)
    step.note = ", ".join(notes)
    # Keep the previous token if this answer had none (an error page), so the run can go on.
    if new_page.csrf_token is None:
        new_page.csrf_token = page.csrf_token
    return step, new_page


def _retry_after(response: requests.Response) -> int | None:
    """Seconds from a Retry-After header in seconds (the only form the app sends), else None."""
    value = response.headers.get("Retry-After", "")
    return int(value) if value.isdigit() else None


def _destroy(session: requests.Session, url: str, page: Page) -> bool:
    """Leave nothing behind in Redis; a failure here is reported but is not the check's subject."""
    try:
        response = session.post(
            f"{url}/destroy",
            data={"csrf_token": page.csrf_token or ""},
            allow_redirects=False,
            timeout=REQUEST_TIMEOUT_SECONDS,
        )
    except requests.RequestException:
        return False
    return response.status_code == 303


def _load_kube_config() -> str:
    """Load the current kubeconfig context (or the in-cluster account); return its namespace."""
    from kubernetes import config

    try:
        config.load_kube_config()
        _, active = config.list_kube_config_contexts()
        return str(active.get("context", {}).get("namespace") or "default")
    except config.ConfigException:
        config.load_incluster_config()
        if IN_CLUSTER_NAMESPACE.exists():
            return IN_CLUSTER_NAMESPACE.read_text().strip()
        return "default"


def _is_ready(pod: Any) -> bool:
    if pod.metadata.deletion_timestamp is not None or pod.status.phase != "Running":
        return False
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


def _address(load_balancer: Any) -> str | None:
    """The first hostname or IP address of a Service's or an Ingress's status.loadBalancer."""
    entries = (load_balancer and load_balancer.ingress) or []
    return next((i.hostname or i.ip for i in entries if i.hostname or i.ip), None)


def _base_url(scheme: str, host: str, port: int) -> str:
    if ":" in host:
        host = f"[{host}]"
    default = {"http": 80, "https": 443}[scheme]
    return f"{scheme}://{host}" + ("" if port == default else f":{port}")


def _service_url(service: Any) -> str | None:
    """The load balancer's base URL: its `http` port, else `https` (TLS at the LB), else any."""
    host = _address(service.status.load_balancer)
    if host is None:
        return None
    ports = {p.name: p.port for p in service.spec.ports or []}
    if "http" in ports:
        scheme, port = "http", ports["http"]
    elif "https" in ports:
        scheme, port = "https", ports["https"]
    else:
        scheme, port = "http", next(iter(ports.values()), 80)
    return _base_url(scheme, host, port)


def _listeners(ingress: Any) -> list[tuple[str, int]]:
    """The ALB's listeners from the listen-ports annotation, as (HTTP or HTTPS, port); none when
    it is missing or not the JSON list the controller reads."""
    raw = (ingress.metadata.annotations or {}).get(ALB_LISTEN_PORTS, "")
    try:
        entries = json.loads(raw)
        return [
            (protocol.upper(), int(port)) for entry in entries for protocol, port in entry.items()
        ]
    except (ValueError, TypeError, AttributeError):
        return []


def _ingress_url(ingress: Any) -> str | None:
    """The Ingress's load balancer's base URL: https when it listens for HTTPS (the listen-ports
    annotation, as k8s/components/alb-https sets it, or a TLS section), else http (port 80 by
    default)."""
    host = _address(ingress.status and ingress.status.load_balancer)
    if host is None:
        return None
    listeners = _listeners(ingress)
    https = [port for protocol, port in listeners if protocol == "HTTPS"]
    http = [port for protocol, port in listeners if protocol == "HTTP"]
    if https:
        return _base_url("https", host, 443 if 443 in https else https[0])
    if http:
        return _base_url("http", host, 80 if 80 in http else http[0])
    if ingress.spec and ingress.spec.tls:
        return _base_url("https", host, 443)
    return _base_url("http", host, 80)


def resolve_target(
    namespace: str | None,
    service_name: str,
    deadline: float,
) -> Target:
    """Wait for the load balancer's address and at least two ready pods behind the Service.

    The address is the Service's when it is of type LoadBalancer, else that of the Ingress of
    the same name (the ALB edge makes the Service ClusterIP)."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    default_namespace = _load_kube_config()
    namespace = namespace or default_namespace
    api = client.CoreV1Api()
    networking = client.NetworkingV1Api()
    status = "no answer yet"
    while True:
        try:
            service = api.read_namespaced_service(
                service_name, namespace, _request_timeout=REQUEST_TIMEOUT_SECONDS
            )
            selector = ",".join(
                f"{k}={v}" for k, v in sorted((service.spec.selector or {}).items())
            )
            if not selector:
                raise Unreachable(f"service {namespace}/{service_name} has no selector")
            pods = api.list_namespaced_pod(
                namespace, label_selector=selector, _request_timeout=REQUEST_TIMEOUT_SECONDS
            ).items
            if service.spec.type == "LoadBalancer":
                url = _service_url(service)
            else:
                url = _ingress_url(
                    _read_ingress(networking, namespace, service_name, service.spec.type)
                )
        except ApiException as exc:
            if exc.status == 404:
                raise Unreachable(f"service {namespace}/{service_name} not found") from None
            raise Unreachable(f"Kubernetes API error {exc.status}: {exc.reason}") from None
        except HTTPError as exc:
            raise Unreachable(f"Kubernetes API unreachable: {exc}") from None
        ready = tuple(sorted(p.metadata.name for p in pods if _is_ready(p)))
        if url and len(ready) >= 2:
            return Target(url=url, ready_pods=ready)
        status = f"load balancer: {url or 'no address yet'}; ready pods: {len(ready)}/{len(pods)}"
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise Unreachable(f"service {namespace}/{service_name} not ready in time ({status})")
        print(f"waiting: {status}", file=sys.stderr)
        time.sleep(min(POLL_SECONDS, remaining))


def _read_ingress(networking: Any, namespace: str, name: str, service_type: str) -> Any:
    """The Ingress `name`; without one a Service that is not a load balancer cannot be reached."""
    from kubernetes.client.exceptions import ApiException

    try:
        return networking.read_namespaced_ingress(
            name, namespace, _request_timeout=REQUEST_TIMEOUT_SECONDS
        )
    except ApiException as exc:
        if exc.status != 404:
            raise
    raise Unreachable(
        f"service {namespace}/{name} is of type {service_type} and there is no ingress "
        f"{namespace}/{name}: no load balancer leads to it (pass --url to check another address)"
    )


def tls_name_note(url: str) -> str:
    """Printed once for an https address found in the cluster: it is the load balancer's own
    name, which the operator's certificate does not name."""
    return (
        f"note: {url} is the load balancer's own name; the certificate names your domain, so "
        "the TLS check (never switched off) fails unless the certificate also covers this name. "
        "Point your domain at the load balancer and pass --url https://YOUR-DOMAIN"
    )


def format_report(run: Run, target: Target, planned: int) -> str:
    header = ("#", "POST served by", "page served by", "listed", "ok")
    rows = [
        (
            str(s.number),
            s.saved_by,
            s.page_from,
            f"{s.listed}/{s.expected}",
            "ok" if s.ok else f"FAIL {s.note}",
        )
        for s in run.steps
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    table_header = "  ".join(c.ljust(w) for c, w in zip(header, widths, strict=True)).rstrip()
    served = ", ".join(f"{name} x{count}" for name, count in sorted(run.replicas.items()))
    http_requests = sum(run.replicas.values())
    summary = [
        table_header,
        *lines,
        "",
        f"URL: {run.url}",
        f"HTTP requests: {http_requests} in one session ({len(run.steps)} of {planned} saves)",
        f"Replicas that served it: {len(run.named_replicas)} ({served})",
    ]
    if target.ready_pods:
        unseen = sorted(set(target.ready_pods) - run.replicas.keys())
        strangers = sorted(run.replicas.keys() - set(target.ready_pods))
        summary.append(f"Ready pods behind the Service: {', '.join(target.ready_pods)}")
        if unseen:
            summary.append(f"  not seen in this run: {', '.join(unseen)}")
        if strangers:
            summary.append(f"  answered but not a ready pod of the Service: {', '.join(strangers)}")
    summary.append(
        f"Messages saved: {len(run.saved)}, listed on the last page: {len(run.last_listed)}, "
        f"missing: {len(run.missing)}"
    )
    summary.append(f"Session destroyed at the end: {'yes' if run.destroyed else 'NO'}")
    if run.passed(planned):
        summary.append("PASS: one session was served by several replicas and kept every message")
    else:
        reasons = []
        if run.first_status != 200:
            reasons.append(f"the first page answered {run.first_status}")
        if len(run.named_replicas) < 2:
            reasons.append("fewer than 2 replicas served the session")
        if run.missing or not all(s.ok for s in run.steps):
            reasons.append("messages were missing or pages failed")
        if len(run.steps) < planned:
            reasons.append("the run stopped early")
        summary.append(f"FAIL: {'; '.join(reasons)}")
    return "\n".join(summary)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ops.verify",
        description="Check that one session survives round-robin over the app's replicas.",
        epilog="Exit status: 0 passed, 1 check failed, 2 usage, 3 unreachable or timed out.",
    )
    parser.add_argument("--namespace", help="default: the kubeconfig context's namespace")
    parser.add_argument("--service", default="message-app", help="Service name (message-app)")
    parser.add_argument("--url", help="check this base URL instead of looking the Service up")
    parser.add_argument("--requests", **number(20, "messages to save, each a POST and a GET"))
    parser.add_argument("--timeout", **number(300.0, "seconds to wait for the deployment"))
    parser.add_argument(
        "--resolve-only",
        action="store_true",
        help="print the load-balancer URL and ready pods, then exit",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.requests < 2:
        parser.error("--requests must be at least 2 (one replica cannot prove anything)")
    if args.timeout <= 0:
        parser.error("--timeout must be positive")
    if args.url and (args.resolve_only or args.namespace):
        parser.error("--url skips the Kubernetes lookup: drop --namespace/--resolve-only")
    deadline = time.monotonic() + args.timeout
    try:
        if args.url:
            target = Target(url=args.url.rstrip("/"))
        else:
            target = resolve_target(args.namespace, args.service, deadline)
            if target.url.startswith("https://"):
                print(tls_name_note(target.url), file=sys.stderr)
            if args.resolve_only:
                print(f"URL: {target.url}")
                print(f"Ready pods: {', '.join(target.ready_pods)}")
                return EXIT_PASSED
        wait_until_serving(target.url, deadline)
        run = run_session(target.url, args.requests, deadline)
    except Unreachable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except requests.RequestException as exc:
        print(f"error: {target.url} stopped answering: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    print(format_report(run, target, args.requests))
    return EXIT_PASSED if run.passed(args.requests) else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
