"""k8s/components/alb and alb-https: the Application Load Balancer option, rendered through
overlays shaped like init.sh's, validated like the base (kubernetes-validate strict per version,
typed models, checkov; the IngressClassParams, a CRD, against a schema of Auto Mode's fields), and
its health check, draining and idle timeout checked against the pods and nginx.conf, as the
NLB's are in test_k8s.py.
"""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes.client import ApiClient

from tests.support import REPO_ROOT, checkov_report

from .cfn import load_path
from .k8s import (
    K8S_VERSIONS,
    custom_resource_schema,
    json_patch,
    render_overlay,
    strict_object,
)
from .test_k8s import _graceful_timeout, _to_model

CERTIFICATE = "arn:aws:acm:eu-central-1:123456789012:certificate/0b1c2d3e-1111-2222-3333-4444"
# eks.amazonaws.com/v1 IngressClassParams: the fields of the EKS User Guide's "IngressClassParams
# Reference" (auto-configure-alb), unknown ones refused as kubernetes-validate --strict does.
# Hand-written: Auto Mode's CRD lives in the cluster EKS runs; no package ships its schema.
INGRESS_CLASS_PARAMS_SCHEMA = custom_resource_schema(
    "eks.amazonaws.com/v1",
    "IngressClassParams",
    strict_object(
        {
            "scheme": {"enum": ["internet-facing", "internal"]},
            "ipAddressType": {"enum": ["ipv4", "dualstack"]},
            "namespaceSelector": {"type": "object"},
            "group": strict_object({"name": {"type": "string"}}),
            "subnets": {"type": "object"},
            "certificateARNs": {
                "type": "array",
                "items": {"type": "string", "pattern": "^arn:aws[a-z-]*:acm:"},
            },
            "tags": {"type": "array"},
            "loadBalancerAttributes": {
                "type": "array",
                "items": strict_object(
                    {"key": {"type": "string"}, "value": {"type": "string"}},
                    required=["key", "value"],
                ),
            },
        }
    ),
    namespaced=False,
)


def _overlay(directory: Path, https: bool) -> list[dict[str, Any]]:
    """An overlay shaped like init.sh's -e alb one, without the stack's values."""
    directory.mkdir()
    (directory / "secrets.env").write_text("SECRET_KEY=0123456789abcdef0123\nREDIS_AUTH_TOKEN=t\n")
    components = ["deployable", "alb"]
    patches = []
    if https:
        components.append("alb-https")
        operation = {"op": "add", "path": "/spec/certificateARNs", "value": [CERTIFICATE]}
        patches.append(json_patch("IngressClassParams", "message-app-alb", [operation]))
    return render_overlay(
        directory,
        components,
        patches,
        secretGenerator=[{"name": "message-app-secrets", "envs": ["secrets.env"]}],
        images=[{"name": "message-app", "newName": "registry.example/app", "newTag": "a1"}],
    )


@pytest.fixture(scope="module", params=[False, True], ids=["http", "https"])
def rendered(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    docs = _overlay(tmp_path_factory.mktemp("alb") / "deploy", request.param)
    return request.param, {
        d["kind"]: d for d in docs if d["metadata"].get("namespace") != "kube-system"
    }


def test_every_object_validates_and_round_trips(rendered: Any, tmp_path: Path) -> None:
    _, kinds = rendered
    client = ApiClient()
    for kind, doc in kinds.items():
        if kind == "IngressClassParams":
            jsonschema.validate(doc, INGRESS_CLASS_PARAMS_SCHEMA)
            continue
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)
        assert client.sanitize_for_serialization(_to_model(doc)) == doc, kind
    # The Secret is the overlay's own (init.sh writes it), not the component's, as in test_k8s.
    path = tmp_path / "rendered.yaml"
    path.write_text(yaml.safe_dump_all([d for k, d in kinds.items() if k != "Secret"]))
    report = checkov_report(path, "kubernetes")
    assert [c["check_id"] for c in report["results"]["failed_checks"]] == []
    assert report["summary"]["passed"] > 50


def test_the_schema_catches_a_misspelled_field(rendered: Any) -> None:
    params = json.loads(json.dumps(rendered[1]["IngressClassParams"]))
    params["spec"]["certificateArn"] = CERTIFICATE  # the self-managed controller's old name
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(params, INGRESS_CLASS_PARAMS_SCHEMA)


def test_the_alb_replaces_the_nlb_and_reaches_the_pods_through_nginx(rendered: Any) -> None:
    """No NLB is made (the Service is ClusterIP), and the Ingress's backend is the Service's
    port whose target is the pod port nginx listens on; the class is Auto Mode's ALB."""
    _, kinds = rendered
    service, ingress = kinds["Service"], kinds["Ingress"]
    assert service["spec"]["type"] == "ClusterIP"
    assert "loadBalancerClass" not in service["spec"]
    assert not [a for a in service["metadata"].get("annotations", {}) if "load-balancer" in a]
    (rule,) = ingress["spec"]["rules"]
    (path,) = rule["http"]["paths"]
    backend = path["backend"]["service"]
    assert backend["name"] == service["metadata"]["name"]
    (port,) = [p for p in service["spec"]["ports"] if p["name"] == backend["port"]["name"]]
    (app,) = kinds["Deployment"]["spec"]["template"]["spec"]["containers"]
    (http,) = [p for p in app["ports"] if p["name"] == port["targetPort"]]
    (listen,) = re.findall(r"^\s*listen (\d+);", (REPO_ROOT / "nginx.conf").read_text(), re.M)
    assert http["containerPort"] == int(listen)
    ingress_class = kinds["IngressClass"]
    assert ingress["spec"]["ingressClassName"] == ingress_class["metadata"]["name"]
    assert ingress_class["spec"]["controller"] == "eks.amazonaws.com/alb"
    assert (
        ingress_class["spec"]["parameters"]["name"]
        == kinds["IngressClassParams"]["metadata"]["name"]
    )
    assert kinds["IngressClassParams"]["spec"]["scheme"] == "internet-facing"
    assert ingress["metadata"]["annotations"]["alb.ingress.kubernetes.io/target-type"] == "ip"


def _annotation(kinds: dict[str, Any], key: str) -> str:
    return kinds["Ingress"]["metadata"]["annotations"][f"alb.ingress.kubernetes.io/{key}"]


def test_health_check_and_draining_match_the_pods(rendered: Any) -> None:
    """As for the NLB: the readiness path on the traffic port, a timeout within the interval,
    and a deregistration delay no shorter than the pod's preStop pause plus gunicorn's
    graceful timeout, which together fit in the grace period."""
    _, kinds = rendered
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    (app,) = pod["containers"]
    assert _annotation(kinds, "healthcheck-path") == app["readinessProbe"]["httpGet"]["path"]
    assert _annotation(kinds, "healthcheck-port") == "traffic-port"
    interval = int(_annotation(kinds, "healthcheck-interval-seconds"))
    assert int(_annotation(kinds, "healthcheck-timeout-seconds")) < interval
    attributes = dict(
        pair.split("=", 1) for pair in _annotation(kinds, "target-group-attributes").split(",")
    )
    delay = int(attributes["deregistration_delay.timeout_seconds"])
    pause = app["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert delay >= pause + _graceful_timeout()
    assert pause + _graceful_timeout() < pod["terminationGracePeriodSeconds"]


def _nginx_text() -> str:
    return (REPO_ROOT / "nginx.conf").read_text()


def _nginx_seconds(directive: str) -> int:
    """A timeout of nginx.conf's client side: set in the http block or a location, not in the
    upstream block (whose keepalive_timeout is gunicorn's side)."""
    text = re.sub(r"upstream \w+ \{.*?\n    \}", "", _nginx_text(), flags=re.S)
    (value,) = re.findall(rf"^\s*{directive} (\d+)s;", text, re.M)
    return int(value)


def test_the_idle_timeout_sits_between_nginxs_read_and_keepalive_timeouts(rendered: Any) -> None:
    """Above proxy_read_timeout, so a slow answer ends as nginx's own 504 page; below
    keepalive_timeout (PROXY_KEEPALIVE_SECONDS, which the component raises from the NLB's short
    one), so the ALB (which reuses its connections to the pods) closes an idle one first and
    never sends on a connection nginx has just closed."""
    _, kinds = rendered
    attributes = {
        a["key"]: a["value"] for a in kinds["IngressClassParams"]["spec"]["loadBalancerAttributes"]
    }
    idle = int(attributes["idle_timeout.timeout_seconds"])
    keepalive = int(kinds["ConfigMap"]["data"]["PROXY_KEEPALIVE_SECONDS"])
    assert _nginx_seconds("proxy_read_timeout") < idle < keepalive
    client_side = re.sub(r"upstream \w+ \{.*?\n    \}", "", _nginx_text(), flags=re.S)
    assert not re.search(r"^\s*keepalive_timeout ", client_side, re.M)  # only the setting's


def test_https_redirects_port_80_and_marks_the_cookie_secure(rendered: Any) -> None:
    https, kinds = rendered
    listeners = json.loads(_annotation(kinds, "listen-ports"))
    config = kinds["ConfigMap"]["data"]
    if https:
        assert listeners == [{"HTTP": 80}, {"HTTPS": 443}]
        assert _annotation(kinds, "ssl-redirect") == "443"
        assert _annotation(kinds, "ssl-policy").startswith("ELBSecurityPolicy-TLS13")
        assert kinds["IngressClassParams"]["spec"]["certificateARNs"] == [CERTIFICATE]
        assert config["SESSION_COOKIE_SECURE"] == "true"
    else:
        assert listeners == [{"HTTP": 80}]
        assert "ssl-redirect" not in str(kinds["Ingress"]["metadata"]["annotations"])
        assert config["SESSION_COOKIE_SECURE"] == "false"


def test_forwarded_addresses_are_believed_from_the_albs_subnets_only(rendered: Any) -> None:
    """The component's default (init.sh writes the stack's) is main.yaml's public subnets, where
    the ALB's nodes are: not a wildcard, and none of the nodes' and pods' subnets, from which a
    pod could forge a client address and share out its rate limit."""
    _, kinds = rendered
    trusted = kinds["ConfigMap"]["data"]["FORWARDED_ALLOW_IPS"].split(",")
    assert trusted[0] == "127.0.0.1" and "*" not in trusted
    main = load_path(REPO_ROOT / "cfn" / "main.yaml")["Parameters"]
    assert trusted[1:] == main["PublicSubnets"]["Default"].split(",")
    private = [ipaddress.ip_network(c) for c in main["PrivateSubnets"]["Default"].split(",")]
    for network in map(ipaddress.ip_network, trusted[1:]):
        assert not any(network.overlaps(p) for p in private), network
