"""The metrics port in the manifests: scrapable inside the cluster, never public.

Checks what `kubectl kustomize` renders for the base, and for the base plus the optional
Prometheus Operator component (k8s/components/prometheus-operator), whose PodMonitor is
validated against a schema of the operator's API (kubernetes-validate knows no CRDs).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.support import checkov_report

from .k8s import (
    K8S_DIR,
    K8S_VERSIONS,
    STRINGS,
    custom_resource_schema,
    render,
    render_overlay,
    strict_object,
)

COMPONENT = K8S_DIR / "components" / "prometheus-operator"

# prometheus-operator's monitoring.coreos.com/v1 PodMonitor, the fields a PodMonitor for this
# app may use (names, types and patterns as in the operator's CRD), unknown fields refused as
# kubernetes-validate --strict does. Hand-written: no package offline ships the CRD's schema
# without side effects (the one that has it as models installs a pytest plugin).
_DURATION = {
    "type": "string",
    "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?"
    r"(([0-9]+)ms)?)$",
}
_SELECTOR = strict_object(
    {
        "matchLabels": STRINGS,
        "matchExpressions": {
            "type": "array",
            "items": strict_object(
                {
                    "key": {"type": "string"},
                    "operator": {"type": "string"},
                    "values": {"type": "array", "items": {"type": "string"}},
                },
                required=["key", "operator"],
            ),
        },
    }
)
_ENDPOINT = strict_object(
    {
        "port": {"type": "string", "minLength": 1},
        "portNumber": {"type": "integer", "minimum": 1, "maximum": 65535},
        "path": {"type": "string"},
        "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
        "interval": _DURATION,
        "scrapeTimeout": _DURATION,
        "honorLabels": {"type": "boolean"},
        "honorTimestamps": {"type": "boolean"},
        "followRedirects": {"type": "boolean"},
        "enableHttp2": {"type": "boolean"},
        "filterRunning": {"type": "boolean"},
    }
)
POD_MONITOR_SCHEMA = custom_resource_schema(
    "monitoring.coreos.com/v1",
    "PodMonitor",
    strict_object(
        {
            "selector": _SELECTOR,
            "namespaceSelector": strict_object(
                {
                    "any": {"type": "boolean"},
                    "matchNames": {"type": "array", "items": {"type": "string"}},
                }
            ),
            "jobLabel": {"type": "string"},
            "podTargetLabels": {"type": "array", "items": {"type": "string"}},
            "sampleLimit": {"type": "integer", "minimum": 0},
            "targetLimit": {"type": "integer", "minimum": 0},
            "podMetricsEndpoints": {"type": "array", "items": _ENDPOINT},
        },
        required=["selector"],
    ),
    namespaced=True,
)


@pytest.fixture(scope="module")
def base() -> list[dict[str, Any]]:
    return render(K8S_DIR)


@pytest.fixture(scope="module")
def with_operator(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """The base plus the component, through an overlay like the one a user would write."""
    return render_overlay(tmp_path_factory.mktemp("operator"), ["prometheus-operator"])


def _one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (doc,) = [d for d in docs if d["kind"] == kind]
    return doc


def _container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = _one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def _metrics_port(docs: list[dict[str, Any]]) -> int:
    (port,) = [p for p in _container(docs)["ports"] if p["name"] == "metrics"]
    return port["containerPort"]


def test_one_metrics_port_number_everywhere(base: list[dict[str, Any]]) -> None:
    port = _metrics_port(base)
    assert port != 8080
    config = _one(base, "ConfigMap")["data"]
    assert int(config["METRICS_PORT"]) == port
    # On every address of the pod, where the annotations and the PodMonitor send the scrapers
    # (the app itself is on loopback behind nginx: GUNICORN_BIND).
    assert config["METRICS_HOST"] in ("0.0.0.0", "::")  # noqa: S104 - what is checked
    annotations = _one(base, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(port)
    assert annotations["prometheus.io/path"] == "/metrics"


def test_the_public_service_does_not_expose_metrics(base: list[dict[str, Any]]) -> None:
    port = _metrics_port(base)
    for service_port in _one(base, "Service")["spec"]["ports"]:
        assert service_port["targetPort"] not in ("metrics", port)
        assert service_port["port"] != port


def test_network_policy_admits_metrics_only_from_scraper_namespaces(
    base: list[dict[str, Any]],
) -> None:
    port = _metrics_port(base)
    rules = _one(base, "NetworkPolicy")["spec"]["ingress"]
    admitting = [r for r in rules if any(p["port"] in (port, "metrics") for p in r["ports"])]
    (rule,) = admitting
    # Every peer is a namespace named outright: no ipBlock, no empty (match-all) selector.
    assert rule["from"]
    for peer in rule["from"]:
        assert set(peer) == {"namespaceSelector"}
        (expression,) = peer["namespaceSelector"]["matchExpressions"]
        assert expression["key"] == "kubernetes.io/metadata.name"
        assert expression["operator"] == "In"
        assert "amazon-cloudwatch" in expression["values"]
    # The rule open to everyone (the load balancer's port) does not include it.
    for other in rules:
        if other is not rule:
            assert "from" not in other
            assert port not in [p["port"] for p in other["ports"]]


def test_the_component_adds_a_valid_pod_monitor_for_the_metrics_port(
    base: list[dict[str, Any]], with_operator: list[dict[str, Any]]
) -> None:
    extra = [d for d in with_operator if d not in base]
    assert [d["kind"] for d in extra] == ["PodMonitor"]
    monitor = extra[0]
    jsonschema.validate(monitor, POD_MONITOR_SCHEMA)
    for doc in with_operator:
        if doc["kind"] != "PodMonitor":
            kubernetes_validate.validate(doc, K8S_VERSIONS[-1], strict=True)
    pod = _one(with_operator, "Deployment")["spec"]["template"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "metrics"
    assert endpoint["path"] == pod["metadata"]["annotations"]["prometheus.io/path"]


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("spec", "podMetricsEndpoints", 0, "pathh"), "/metrics"),
        (("spec", "podMetricsEndpoints", 0, "interval"), "30 seconds"),
        (("spec", "selector", "matchLabel"), {"a": "b"}),
        (("spec", "podMetricsEndpoints", 0, "portNumber"), "9090"),
    ],
)
def test_the_pod_monitor_schema_catches_mistakes(path: tuple[Any, ...], value: Any) -> None:
    monitor = yaml.safe_load((COMPONENT / "podmonitor.yaml").read_text())
    jsonschema.validate(monitor, POD_MONITOR_SCHEMA)
    bad = copy.deepcopy(monitor)
    target = bad
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, POD_MONITOR_SCHEMA)


def test_checkov_finds_no_failed_checks_with_the_component(
    with_operator: list[dict[str, Any]], tmp_path: Path
) -> None:
    path = tmp_path / "rendered.yaml"
    path.write_text(yaml.safe_dump_all(with_operator))
    report = checkov_report(path, "kubernetes")
    assert [c["check_id"] for c in report["results"]["failed_checks"]] == []
    assert report["summary"]["passed"] > 50
