"""Checks on the kustomize base in k8s/, run on what `kubectl kustomize k8s/` renders.

The rendered documents are what a cluster receives, so every check looks at them rather than at the
source files: schema validation per Kubernetes version, the typed models of the `kubernetes` client,
cross-object invariants (labels, ports, env sources, shutdown timing) and checkov.
"""

from __future__ import annotations

import ast
import copy
import inspect
import json
import re
from dataclasses import fields
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes.client import ApiClient
from kubernetes.utils import parse_quantity

from app import proxy as sidecar
from app.config import Settings, body_cap
from tests.support import NGINX_CONNECTION_OVERHEAD, REPO_ROOT, checkov_report

from .k8s import K8S_DIR, K8S_VERSIONS, json_patch, render, render_overlay

# The namespace the bare base puts every object in; nobody creates it, so `kubectl apply -k k8s/`
# fails at once with its name, which says what to do. The deploy overlays remove it.
GUARD_NAMESPACE = "not-deployable-run-init-sh-then-kubectl-apply-k-deploy"
CERTIFICATE = "arn:aws:acm:eu-central-1:123456789012:certificate/0b1c2d3e-1111-2222-3333-4444"
SSL_CERT = "service.beta.kubernetes.io/aws-load-balancer-ssl-cert"

# The Secret is never rendered (it holds values); these are the keys docs/kubernetes.md's
# `kubectl create secret generic message-app-secrets` command and init.sh's overlay create.
SECRET_NAME = "message-app-secrets"
SECRET_KEYS = {"SECRET_KEY", "SECRET_KEY_FALLBACKS", "REDIS_AUTH_TOKEN"}
# Keys a pod may start without: fallbacks exist only during a key rotation, the token only with a
# password; a pod without SECRET_KEY must not start, or replicas would sign with different keys.
OPTIONAL_SECRET_KEYS = {"SECRET_KEY_FALLBACKS", "REDIS_AUTH_TOKEN"}
# Environment the app and gunicorn.conf.py read (the app contract): one field of
# app.config.Settings each, the one place that reads the environment (tests/unit/test_config.py
# holds to it). Each must get a value from the manifests, unless listed in APP_DEFAULTS, where the
# app's own default is the intended one.
APP_ENV_VARS = {setting.metadata["variable"] for setting in fields(Settings)}
APP_DEFAULTS = {
    "REDIS_CLIENT_CACHE": "true: RESP3 client-side caching works on ElastiCache 7+",
    "READ_CACHE_MAX_BYTES": "32 MiB per worker: 64 MiB of the app container's 512 MiB",
    "PROMETHEUS_MULTIPROC_DIR": "a fresh directory on the pod's /dev/shm (memory)",
    "REDIS_WAIT_REPLICAS": "auto: saves wait for a replica while the primary has one",
    "REDIS_WAIT_TIMEOUT_MS": "200: below the 0.5 s socket timeout",
    "SESSION_MAX_BYTES": "256 KiB: see docs/failure-behaviour.md's capacity table",
    "RATE_LIMIT_SAVES": "30/minute per client address",
    "RATE_LIMIT_NEW_SESSIONS": "10/minute per client address",
    "REDIS_CLUSTER": "auto: the app asks the server (INFO cluster) at start-up",
    "REDIS_USERNAME": "none: the AUTH token is the default user's (a replication group)",
    "REDIS_AUTH": "token: the base fits any Redis; init.sh's overlay says iam or token",
    "REDIS_IAM_CACHE_NAME": "none: set by init.sh's overlay with iam",
    "REDIS_IAM_SERVERLESS": "false: set by init.sh's overlay with iam",
    "AWS_REGION": "none: set by init.sh's overlay with iam",
}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict[str, Any]], Path]:
    """Render once per module; the file copy is what checkov scans."""
    docs = render(K8S_DIR)
    path = tmp_path_factory.mktemp("k8s") / "rendered.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    return docs, path


@pytest.fixture(scope="module")
def docs(rendered: tuple[list[dict[str, Any]], Path]) -> list[dict[str, Any]]:
    return rendered[0]


def _model_name(doc: dict[str, Any]) -> str:
    """`apps/v1` + `Deployment` -> `V1Deployment`, the client's class naming."""
    version = doc["apiVersion"].rpartition("/")[2]
    return version[0].upper() + version[1:] + doc["kind"]


def _to_model(doc: dict[str, Any]) -> Any:
    """Deserialize like the client does for an API response (its signature changed in v32)."""
    client = ApiClient()
    text = json.dumps(doc)
    if "response_text" in inspect.signature(client.deserialize).parameters:
        return client.deserialize(text, _model_name(doc), "application/json")
    return client.deserialize(SimpleNamespace(data=text), _model_name(doc))


@pytest.fixture(scope="module")
def models(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """One typed model per kind; the base has exactly one object of each kind."""
    return {doc["kind"]: _to_model(doc) for doc in docs}


def _one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (doc,) = [d for d in docs if d["kind"] == kind]
    return doc


def test_renders_the_expected_objects_and_no_secret(docs: list[dict[str, Any]]) -> None:
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in docs)
    config_name = _one(docs, "ConfigMap")["metadata"]["name"]
    assert config_name.startswith("message-app-config-"), "generator adds a content hash"
    assert kinds == sorted(
        [
            ("ConfigMap", config_name),
            ("Deployment", "message-app"),
            ("HorizontalPodAutoscaler", "message-app"),
            ("NetworkPolicy", "message-app"),
            ("PodDisruptionBudget", "message-app"),
            ("Service", "message-app"),
            ("ServiceAccount", "message-app"),
        ]
    )


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_object_validates_strictly(docs: list[dict[str, Any]], version: str) -> None:
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def test_strict_validation_catches_a_misspelled_field(docs: list[dict[str, Any]]) -> None:
    """Guards the check above: clients silently ignore a typo'd probe name."""
    bad = copy.deepcopy(_one(docs, "Deployment"))
    container = bad["spec"]["template"]["spec"]["containers"][0]
    container["livenessprobe"] = container.pop("livenessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSIONS[-1], strict=True)


def test_every_object_round_trips_through_the_typed_models(docs: list[dict[str, Any]]) -> None:
    """The client drops fields it does not know, so equality proves every field was understood."""
    client = ApiClient()
    for doc in docs:
        assert client.sanitize_for_serialization(_to_model(doc)) == doc, doc["kind"]


def test_the_bare_base_is_refused_with_a_message_that_says_what_to_do(
    docs: list[dict[str, Any]],
) -> None:
    """Every object goes to a namespace nobody creates, so the API server refuses all of them
    (nothing half-applied) with the namespace's name, which names the one command to run."""
    assert {d["metadata"].get("namespace") for d in docs} == {GUARD_NAMESPACE}
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", GUARD_NAMESPACE)
    assert len(GUARD_NAMESPACE) <= 63
    assert "init-sh" in GUARD_NAMESPACE and "kubectl-apply-k-deploy" in GUARD_NAMESPACE
    # The one command is written where people look: the README's deploy section, k8s/README.md,
    # and the last lines init.sh prints.
    for path in (REPO_ROOT / "README.md", K8S_DIR / "README.md"):
        text = path.read_text()
        assert "kubectl apply -k .deploy/" in text and GUARD_NAMESPACE in text, path.name
    init_tail = (REPO_ROOT / "init.sh").read_text().rsplit("\n", 6)[1:]
    assert any("kubectl apply -k $OVERLAY" in line for line in init_tail)
    assert any("the one command that deploys the app" in line for line in init_tail)


def test_selectors_match_the_pod_labels(models: dict[str, Any]) -> None:
    deployment = models["Deployment"]
    pod_labels = deployment.spec.template.metadata.labels
    selectors = {
        "Deployment": deployment.spec.selector.match_labels,
        "Service": models["Service"].spec.selector,
        "PodDisruptionBudget": models["PodDisruptionBudget"].spec.selector.match_labels,
        "NetworkPolicy": models["NetworkPolicy"].spec.pod_selector.match_labels,
    }
    for i, spread in enumerate(deployment.spec.template.spec.topology_spread_constraints):
        selectors[f"topologySpread[{i}]"] = spread.label_selector.match_labels
    for owner, selector in selectors.items():
        assert selector, owner
        assert selector.items() <= pod_labels.items(), owner
    assert deployment.spec.selector.match_expressions is None
    target = models["HorizontalPodAutoscaler"].spec.scale_target_ref
    assert (target.api_version, target.kind, target.name) == (
        "apps/v1",
        "Deployment",
        deployment.metadata.name,
    )


def test_pods_carry_the_recommended_labels(models: dict[str, Any]) -> None:
    labels = models["Deployment"].spec.template.metadata.labels
    assert labels["app.kubernetes.io/name"] == "message-app"
    assert {"app.kubernetes.io/component", "app.kubernetes.io/part-of"} <= labels.keys()


def test_the_proxy_memory_limit_covers_every_connection_holding_a_body(
    models: dict[str, Any],
) -> None:
    """nginx holds each body it accepts in memory (never on disk): with every connection it
    allows holding a body of the app's cap one byte short, it must stay under its limit rather
    than be OOM-killed with every connection of the pod. Ties nginx.conf's worker_connections,
    the ConfigMap's MESSAGE_MAX_LENGTH and the container's limit together."""
    pod = models["Deployment"].spec.template.spec
    (proxy,) = pod.init_containers
    nginx_conf = (REPO_ROOT / "nginx.conf").read_text()
    (connections,) = re.findall(r"^\s*worker_connections (\d+);", nginx_conf, re.M)
    (workers,) = re.findall(r"^\s*worker_processes (\d+);", nginx_conf, re.M)
    cap = body_cap(Settings.one_from_env("message_max_length", models["ConfigMap"].data))
    worst = int(workers) * int(connections) * (cap + NGINX_CONNECTION_OVERHEAD)
    base = 16 * 1024 * 1024  # the master and an idle worker: ~6 MB measured
    assert parse_quantity(proxy.resources.limits["memory"]) >= worst + base


def _resolve_port(port: int | str, container: Any) -> int:
    if isinstance(port, int):
        return port
    (number,) = [p.container_port for p in container.ports if p.name == port]
    return number


def test_ports_line_up(models: dict[str, Any]) -> None:
    (container,) = models["Deployment"].spec.template.spec.containers
    ports = [(p.name, p.container_port) for p in container.ports]
    assert ports == [("http", 8080), ("metrics", 9090)]  # metrics: see test_k8s_metrics.py
    (service_port,) = models["Service"].spec.ports
    assert (service_port.name, service_port.port) == ("http", 80)
    assert models["Service"].spec.type == "LoadBalancer"
    # EKS Auto Mode's NLB with IP targets (not a Classic ELB through the nodes).
    assert models["Service"].spec.load_balancer_class == "eks.amazonaws.com/nlb"
    annotations = models["Service"].metadata.annotations
    prefix = "service.beta.kubernetes.io/aws-load-balancer-"
    assert annotations[prefix + "nlb-target-type"] == "ip"
    assert annotations[prefix + "scheme"] == "internet-facing"
    assert annotations[prefix + "healthcheck-path"] == container.readiness_probe.http_get.path
    assert _resolve_port(service_port.target_port, container) == 8080
    for probe in (container.startup_probe, container.liveness_probe, container.readiness_probe):
        assert _resolve_port(probe.http_get.port, container) == 8080
    assert container.readiness_probe.http_get.path == "/readyz"
    assert container.liveness_probe.http_get.path == "/healthz"
    assert container.startup_probe.http_get.path == "/healthz"
    ingress = models["NetworkPolicy"].spec.ingress[0]
    ingress_ports = [(_resolve_port(p.port, container), p.protocol) for p in ingress.ports]
    assert ingress_ports == [(8080, "TCP")]


def test_network_policy_egress_allows_dns_the_configured_redis_port_and_pod_identity(
    models: dict[str, Any],
) -> None:
    policy = models["NetworkPolicy"].spec
    assert sorted(policy.policy_types) == ["Egress", "Ingress"]
    anywhere = {(p.port, p.protocol) for rule in policy.egress if not rule.to for p in rule.ports}
    redis_port = int(models["ConfigMap"].data["REDIS_PORT"])
    assert anywhere == {(53, "UDP"), (53, "TCP"), (redis_port, "TCP")}
    # The EKS Pod Identity agent's link-local addresses, port 80, and nothing else by address.
    (agent,) = [rule for rule in policy.egress if rule.to]
    assert {peer.ip_block.cidr for peer in agent.to} == {"169.254.170.23/32", "fd00:ec2::23/128"}
    assert all(peer.ip_block._except is None for peer in agent.to)
    assert [(p.port, p.protocol) for p in agent.ports] == [(80, "TCP")]


def test_every_env_var_has_a_source_and_every_referenced_key_exists(
    models: dict[str, Any],
) -> None:
    (container,) = models["Deployment"].spec.template.spec.containers
    config = models["ConfigMap"]
    sources: dict[str, str] = {}
    for env_from in container.env_from:
        assert env_from.secret_ref is None, "secrets are mapped key by key below"
        assert env_from.config_map_ref.name == config.metadata.name
        sources.update(dict.fromkeys(config.data, "configmap"))
    for var in container.env:
        ref = var.value_from
        if ref.secret_key_ref is not None:
            assert ref.secret_key_ref.name == SECRET_NAME
            assert ref.secret_key_ref.key in SECRET_KEYS
            assert bool(ref.secret_key_ref.optional) == (var.name in OPTIONAL_SECRET_KEYS)
            sources[var.name] = "secret"
        else:
            assert ref.field_ref.field_path == "metadata.name"
            sources[var.name] = "fieldRef"
    missing = APP_ENV_VARS - sources.keys() - APP_DEFAULTS.keys()
    assert not missing, sorted(missing)
    assert not sources.keys() - APP_ENV_VARS, "the manifests set variables nobody reads"
    assert sources["REPLICA_NAME"] == "fieldRef"
    assert {k for k, v in sources.items() if v == "secret"} == SECRET_KEYS


def _graceful_timeout() -> float:
    """gunicorn.conf.py's `graceful_timeout = N`, read without running the file (it checks env)."""
    conf = REPO_ROOT / "gunicorn.conf.py"
    for node in ast.parse(conf.read_text()).body:
        if isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "graceful_timeout":
            return float(ast.literal_eval(node.value))
    return 30.0  # gunicorn's default


def test_graceful_shutdown_fits_in_the_grace_period(models: dict[str, Any]) -> None:
    pod = models["Deployment"].spec.template.spec
    (container,) = pod.containers
    sleep = container.lifecycle.pre_stop.sleep
    assert sleep is not None, "the kubelet's sleep action: the image needs no sleep binary"
    pause = sleep.seconds
    assert pause >= 5, "too short for the endpoint removal to reach the load balancer"
    assert pause + _graceful_timeout() < pod.termination_grace_period_seconds


def _target_group_attributes(service: Any) -> dict[str, str]:
    key = "service.beta.kubernetes.io/aws-load-balancer-target-group-attributes"
    pairs = service.metadata.annotations[key].split(",")
    return dict(pair.strip().split("=", 1) for pair in pairs)


def test_the_nlb_drains_longer_than_a_pod_takes_to_stop(models: dict[str, Any]) -> None:
    """No request hits a terminating pod: the pod keeps serving (preStop) while the NLB stops
    sending it new connections, and the NLB keeps a draining target's open connections at least
    as long as the pod may still answer them."""
    pod = models["Deployment"].spec.template.spec
    (container,) = pod.containers
    pause = container.lifecycle.pre_stop.sleep.seconds
    attributes = _target_group_attributes(models["Service"])
    delay = int(attributes["deregistration_delay.timeout_seconds"])
    # NLB target deregistration reaches the data plane in tens of seconds, not kube-proxy's one.
    assert pause >= 30
    assert delay >= pause + _graceful_timeout()
    assert pause + _graceful_timeout() < pod.termination_grace_period_seconds


def test_client_addresses_reach_the_pods_and_nobody_else_can_forge_them(
    models: dict[str, Any],
) -> None:
    """IP targets with client IP preservation: the TCP peer is the client and the NLB adds no
    X-Forwarded-For, so gunicorn trusts forwarded headers from the pod itself only."""
    attributes = _target_group_attributes(models["Service"])
    assert attributes["preserve_client_ip.enabled"] == "true"
    trusted = models["ConfigMap"].data["FORWARDED_ALLOW_IPS"].split(",")
    assert set(trusted) <= {"127.0.0.1", "::1"}, trusted


def test_requests_do_not_exceed_limits(models: dict[str, Any]) -> None:
    (container,) = models["Deployment"].spec.template.spec.containers
    resources = container.resources
    assert resources.requests.keys() == resources.limits.keys() == {"cpu", "memory"}
    for name, request in resources.requests.items():
        assert parse_quantity(request) <= parse_quantity(resources.limits[name]), name


def test_pod_meets_the_restricted_pod_security_standard(models: dict[str, Any]) -> None:
    pod = models["Deployment"].spec.template.spec
    (container,) = pod.containers
    assert pod.automount_service_account_token is False
    assert pod.security_context.run_as_non_root is True
    assert pod.security_context.seccomp_profile.type == "RuntimeDefault"
    assert pod.host_network is None and pod.host_pid is None and pod.host_ipc is None
    # The container's own value wins, 0 included (`or` would read a container's root as the pod's).
    user = container.security_context.run_as_user
    if user is None:
        user = pod.security_context.run_as_user
    assert isinstance(user, int) and user > 0
    ctx = container.security_context
    assert ctx.allow_privilege_escalation is False
    assert ctx.privileged is None
    assert ctx.capabilities.drop == ["ALL"] and ctx.capabilities.add is None
    assert ctx.read_only_root_filesystem is True
    mounts = {m.mount_path: m.name for m in container.volume_mounts}
    volumes = {v.name: v for v in pod.volumes}
    assert volumes[mounts["/tmp"]].empty_dir is not None
    assert all(v.host_path is None for v in pod.volumes)


def test_capacity_objects_agree(models: dict[str, Any]) -> None:
    # The HPA alone sets the count: one in the Deployment would be applied again by every
    # `kubectl apply`, cutting a scaled-out fleet back to it (found by review).
    assert models["Deployment"].spec.replicas is None
    hpa = models["HorizontalPodAutoscaler"].spec
    assert hpa.min_replicas == 3
    assert hpa.max_replicas >= hpa.min_replicas
    (metric,) = hpa.metrics
    assert metric.resource.name == "cpu" and metric.resource.target.type == "Utilization"
    pdb = models["PodDisruptionBudget"].spec
    assert pdb.max_unavailable == 1 and pdb.min_available is None
    zones = {
        c.topology_key for c in models["Deployment"].spec.template.spec.topology_spread_constraints
    }
    assert zones == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}


def test_checkov_finds_no_failed_checks(rendered: tuple[list[dict[str, Any]], Path]) -> None:
    path = rendered[1]
    report = checkov_report(path, "kubernetes")
    summary = report["summary"]
    failed = [c["check_id"] for c in report["results"]["failed_checks"]]
    assert failed == [] and summary["failed"] == 0
    assert summary["passed"] > 50
    # Passed and skipped checks are listed too (no --quiet), so the reasons can be checked.
    assert summary["skipped"] == len(report["results"]["skipped_checks"]) > 0
    for skipped in report["results"]["skipped_checks"]:
        reason = skipped["check_result"].get("suppress_comment", "")
        assert len(reason) > 20 and reason != "No comment provided", skipped["check_id"]


def _render_overlay(
    directory: Path, redis_host: str, certificate: str | None = None
) -> list[dict[str, Any]]:
    """An overlay shaped like the one init.sh writes to .deploy/ (stack outputs, secrets, image;
    with a certificate the HTTPS component and the certificate annotation)."""
    directory.mkdir()
    (directory / "secrets.env").write_text(
        "SECRET_KEY=0123456789abcdef0123\nSECRET_KEY_FALLBACKS=\nREDIS_AUTH_TOKEN=t\n"
    )
    components = ["deployable"]
    patches = []
    if certificate:
        components.append("https")
        annotation = "/metadata/annotations/" + SSL_CERT.replace("/", "~1")
        operation = {"op": "add", "path": annotation, "value": certificate}
        patches.append(json_patch("Service", "message-app", [operation]))
    return render_overlay(
        directory,
        components,
        patches,
        configMapGenerator=[
            {
                "name": "message-app-config",
                "behavior": "merge",
                "literals": [f"REDIS_HOST={redis_host}"],
            }
        ],
        secretGenerator=[{"name": SECRET_NAME, "envs": ["secrets.env"]}],
        images=[
            {"name": "message-app", "newName": "registry.example/message-app", "newTag": "abc1234"}
        ],
    )


def _app_objects(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The app's objects: the cluster-wide setting in kube-system left out."""
    return [d for d in docs if d["metadata"].get("namespace") != "kube-system"]


@pytest.mark.parametrize("certificate", [None, CERTIFICATE], ids=["http", "https"])
def test_both_deploy_overlays_validate_and_round_trip(
    certificate: str | None, tmp_path: Path
) -> None:
    """kubernetes-validate (strict, every version) and the typed models on what is applied."""
    out = _render_overlay(tmp_path / "deploy", "master.example.cache.amazonaws.com", certificate)
    client = ApiClient()
    for doc in out:
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)
        assert client.sanitize_for_serialization(_to_model(doc)) == doc, doc["kind"]
    (cluster_setting,) = [d for d in out if d not in _app_objects(out)]
    assert (cluster_setting["kind"], cluster_setting["metadata"]["name"]) == (
        "ConfigMap",
        "amazon-vpc-cni",
    )
    assert cluster_setting["data"] == {"enable-network-policy-controller": "true"}
    # The guard namespace is gone: the objects land in the kubeconfig context's namespace.
    assert [d["kind"] for d in _app_objects(out) if "namespace" in d["metadata"]] == []
    service = _to_model(_one(_app_objects(out), "Service"))
    config = _one(_app_objects(out), "ConfigMap")["data"]
    ports = [(p.name, p.port, p.target_port) for p in service.spec.ports]
    if certificate:
        # TLS on 443 only (80 closed: an NLB cannot redirect); Secure cookies.
        assert ports == [("https", 443, "http")]
        assert service.metadata.annotations[SSL_CERT] == certificate
        ssl_ports = service.metadata.annotations[
            "service.beta.kubernetes.io/aws-load-balancer-ssl-ports"
        ]
        assert ssl_ports == "https"
        policy = service.metadata.annotations[
            "service.beta.kubernetes.io/aws-load-balancer-ssl-negotiation-policy"
        ]
        assert policy == "ELBSecurityPolicy-TLS13-1-2-2021-06"  # no TLS 1.0/1.1
        assert config["SESSION_COOKIE_SECURE"] == "true"
    else:
        assert ports == [("http", 80, "http")]
        assert SSL_CERT not in service.metadata.annotations
        assert config["SESSION_COOKIE_SECURE"] == "false"


def test_the_deploy_overlay_completes_the_base(docs: list[dict[str, Any]], tmp_path: Path) -> None:
    out = _app_objects(_render_overlay(tmp_path / "deploy", "master.example.cache.amazonaws.com"))
    for doc in out:
        kubernetes_validate.validate(doc, K8S_VERSIONS[-1], strict=True)
    config, secret, deployment = (_one(out, k) for k in ("ConfigMap", "Secret", "Deployment"))
    base_config = _one(docs, "ConfigMap")["data"]
    assert config["data"] == {**base_config, "REDIS_HOST": "master.example.cache.amazonaws.com"}
    assert secret["data"].keys() == SECRET_KEYS
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "registry.example/message-app:abc1234"
    assert container["envFrom"] == [{"configMapRef": {"name": config["metadata"]["name"]}}]
    secret_refs = {
        e["valueFrom"]["secretKeyRef"]["name"]
        for e in container["env"]
        if "secretKeyRef" in e["valueFrom"]
    }
    assert secret_refs == {secret["metadata"]["name"]}
    # A changed value gives the ConfigMap a new name, so the Deployment rolls its pods.
    other = _render_overlay(tmp_path / "other", "replica.example.cache.amazonaws.com")
    other_config = _one(_app_objects(other), "ConfigMap")
    assert other_config["metadata"]["name"] != config["metadata"]["name"]


def test_the_proxy_sidecar_fronts_gunicorn(models: dict[str, Any]) -> None:
    """nginx (nginx.conf, from the app's image) owns the pod's port; gunicorn listens on loopback
    behind it, where only nginx reaches it."""
    pod = models["Deployment"].spec.template.spec
    (app,) = pod.containers
    (proxy,) = pod.init_containers
    assert proxy.name == "proxy" and proxy.restart_policy == "Always"  # a native sidecar
    assert proxy.image == app.image
    # The body limits from the app's setting, then nginx as the container's PID 1.
    assert proxy.command[:2] == ["sh", "-c"]
    limits, start = proxy.command[2].split(" && ")
    assert limits == "python -m app.proxy > /tmp/nginx/limits.conf"
    assert start == "exec nginx -c /app/nginx.conf"
    assert "include /tmp/nginx/limits.conf;" in (REPO_ROOT / "nginx.conf").read_text()
    # The settings app/proxy.py reads, from the app's own ConfigMap (the same values).
    variables = {f.name: f.metadata["variable"] for f in fields(Settings)}
    assert [setting.name for setting in proxy.env] == [variables[n] for n in sidecar.SETTINGS]
    for setting in proxy.env:
        assert setting.value_from.config_map_key_ref.name == models["ConfigMap"].metadata.name
        assert setting.value_from.config_map_key_ref.key == setting.name
        assert setting.name in models["ConfigMap"].data
    nginx_conf = (REPO_ROOT / "nginx.conf").read_text()
    (listen,) = re.findall(r"^\s*listen (\d+);", nginx_conf, re.M)
    # The pages' way to gunicorn and the probes' (nginx.conf says why there are two).
    upstreams = re.findall(r"^\s*server ([\d.:]+)[ ;]", nginx_conf, re.M)
    assert int(listen) == _resolve_port("http", app)
    assert upstreams == [models["ConfigMap"].data["GUNICORN_BIND"]] * 2
    assert upstreams[0].startswith("127.0.0.1:")
    for probe in (proxy.startup_probe, proxy.liveness_probe, proxy.readiness_probe):
        assert probe.tcp_socket.port == int(listen)
    ctx = proxy.security_context
    assert ctx.allow_privilege_escalation is False and ctx.read_only_root_filesystem is True
    assert ctx.capabilities.drop == ["ALL"] and ctx.run_as_non_root is True
    mounts = {m.mount_path: m.name for m in proxy.volume_mounts}
    volumes = {v.name: v for v in pod.volumes}
    assert volumes[mounts["/tmp/nginx"]].empty_dir is not None
    assert "/tmp/nginx/nginx.pid" in nginx_conf
    assert proxy.resources.requests.keys() == proxy.resources.limits.keys() == {"cpu", "memory"}
