"""init.sh's edge: the ALB overlay (-e alb, or the stack's LoadBalancerType), and the CloudWatch
agent's scrape of the metrics port in the overlay it writes, for either load balancer.

Real: init.sh, the stacks in moto (the stand-in main stack's outputs as cfn/main.yaml and
cfn/edge.yaml give them), `kubectl kustomize` on the real k8s/ and its components, the add-on's
configuration from the real cfn/observability.yaml. Stood in: docker and kubectl against a cluster.
"""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Any

import jsonschema
import kubernetes_validate
import pytest

from tests.support import REPO_ROOT

from ..cfn import load_path
from ..test_k8s_alb import INGRESS_CLASS_PARAMS_SCHEMA
from .harness import (
    ACCESS_LOG_BUCKET,
    CERTIFICATE,
    PROFILE,
    STACK,
    WEB_ACL,
    World,
    assert_profile_and_region,
    rendered,
)

K8S_VERSIONS = ["1.35", "1.36"]
# main.yaml's default subnets, which the stand-in stack's outputs join.
PUBLIC_SUBNETS = "10.0.1.0/24,10.0.2.0/24,10.0.3.0/24"
PRIVATE_SUBNETS = "10.0.4.0/24,10.0.5.0/24,10.0.6.0/24"


def _attributes(params: dict[str, Any]) -> dict[str, str]:
    return {a["key"]: a["value"] for a in params["spec"]["loadBalancerAttributes"]}


def test_init_writes_the_alb_overlay_from_the_stack(world: World) -> None:
    """A stack deployed with -e alb and a certificate: init.sh (no -e) writes the ALB overlay
    with the stack's WAF web ACL on the Ingress, its access-log bucket and the certificate on
    the IngressClassParams, HTTP redirected to HTTPS, the ALB's subnets as the only proxies the
    app believes, and no NLB (the Service is ClusterIP)."""
    world.create_stacks(certificate=CERTIFICATE, parameters={"LoadBalancerType": "alb"})
    world.create_cluster()
    run = world.run("init.sh", "-p", PROFILE)
    assert run.returncode == 0, run.stderr
    assert_profile_and_region(run)
    hint = (
        "kubectl -n default get ingress message-app # ADDRESS is the ALB's DNS name: open https://"
    )
    assert hint in run.stdout
    kinds = rendered(world.root)
    # In the stack's AppNamespace, but for the kinds that belong to no namespace (the ALB's
    # class, and the pipeline's read access to it: k8s/components/alb/deployer.yaml).
    cluster_scoped = {"IngressClass", "IngressClassParams", "ClusterRole", "ClusterRoleBinding"}
    namespaces = {kind: doc["metadata"].get("namespace") for kind, doc in kinds.items()}
    assert {k: n for k, n in namespaces.items() if k in cluster_scoped} == dict.fromkeys(
        cluster_scoped
    )
    app_kinds = [k for k in kinds if k not in cluster_scoped and not k.startswith("kube-system/")]
    assert {namespaces[k] for k in app_kinds} == {"default"}
    service, ingress = kinds["Service"], kinds["Ingress"]
    assert service["spec"]["type"] == "ClusterIP"
    assert "loadBalancerClass" not in service["spec"]
    assert not [a for a in service["metadata"]["annotations"] if "aws-load-balancer" in a]
    annotations = ingress["metadata"]["annotations"]
    assert annotations["alb.ingress.kubernetes.io/wafv2-acl-arn"] == WEB_ACL
    assert json.loads(annotations["alb.ingress.kubernetes.io/listen-ports"]) == [
        {"HTTP": 80},
        {"HTTPS": 443},
    ]
    assert annotations["alb.ingress.kubernetes.io/ssl-redirect"] == "443"
    params = kinds["IngressClassParams"]
    jsonschema.validate(params, INGRESS_CLASS_PARAMS_SCHEMA)
    assert params["spec"]["certificateARNs"] == [CERTIFICATE]
    attributes = _attributes(params)
    assert attributes["access_logs.s3.enabled"] == "true"
    assert attributes["access_logs.s3.bucket"] == ACCESS_LOG_BUCKET
    assert attributes["access_logs.s3.prefix"] == "alb"
    config = kinds["ConfigMap"]["data"]
    assert config["SESSION_COOKIE_SECURE"] == "true"
    assert config["FORWARDED_ALLOW_IPS"] == f"127.0.0.1,{PUBLIC_SUBNETS}"
    # The IngressClass hands the Ingress to Auto Mode's ALB with these parameters.
    ingress_class = kinds["IngressClass"]
    assert ingress["spec"]["ingressClassName"] == ingress_class["metadata"]["name"]
    assert ingress_class["spec"]["controller"] == "eks.amazonaws.com/alb"
    assert ingress_class["spec"]["parameters"] == {
        "apiGroup": "eks.amazonaws.com",
        "kind": "IngressClassParams",
        "name": params["metadata"]["name"],
    }
    for kind, doc in kinds.items():
        if kind != "IngressClassParams":
            for version in K8S_VERSIONS:
                kubernetes_validate.validate(doc, version, strict=True)


def test_init_e_alb_needs_a_stack_deployed_with_alb(world: World) -> None:
    """An NLB stack has no WAF web ACL or access-log bucket: -e alb says what to run first and
    writes nothing."""
    world.create_stacks()
    world.create_cluster()
    run = world.run("init.sh", "-p", PROFILE, "-e", "alb")
    assert run.returncode == 1
    assert f"run ./deploy.sh -p {PROFILE} -r eu-central-1 -s {STACK} -e alb first" in run.stderr
    assert not (world.root / ".deploy" / "kustomization.yaml").exists()


# --- the CloudWatch agent's scrape of the metrics port ------------------------------------------


def _addon_configuration(cluster: str) -> dict[str, Any]:
    """The add-on's configuration values in cfn/observability.yaml, as CloudFormation sends them."""
    template = load_path(REPO_ROOT / "cfn" / "observability.yaml")
    text = template["Resources"]["CloudWatchObservabilityAddon"]["Properties"][
        "ConfigurationValues"
    ]["Fn::Sub"]
    values = {"ClusterName": cluster, "AWS::Region": "eu-central-1"}
    return json.loads(re.sub(r"\$\{([^}]+)\}", lambda m: values[m[1]], text))


def _sanitized(name: str) -> str:
    """A label or annotation name as Prometheus' Kubernetes discovery writes it."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def _pod_targets(pod: dict[str, Any], ip: str, namespace: str) -> list[dict[str, str]]:
    """The targets Prometheus' kubernetes_sd_configs role pod finds for a pod: one per declared
    container port (of the containers and init containers), one per container without any."""
    common = {
        "__meta_kubernetes_namespace": namespace,
        "__meta_kubernetes_pod_name": "message-app-6d5f-abcde",
        **{
            f"__meta_kubernetes_pod_label_{_sanitized(k)}": v
            for k, v in pod["metadata"]["labels"].items()
        },
        **{
            f"__meta_kubernetes_pod_annotation_{_sanitized(k)}": v
            for k, v in pod["metadata"].get("annotations", {}).items()
        },
    }
    targets = []
    for container in [*pod["spec"]["containers"], *pod["spec"].get("initContainers", [])]:
        for port in container.get("ports", []) or [None]:
            labels = {**common, "__meta_kubernetes_pod_container_name": container["name"]}
            if port is None:
                labels["__address__"] = ip
            else:
                labels["__address__"] = f"{ip}:{port['containerPort']}"
                labels["__meta_kubernetes_pod_container_port_name"] = port.get("name", "")
                labels["__meta_kubernetes_pod_container_port_number"] = str(port["containerPort"])
            labels["__metrics_path__"] = "/metrics"
            targets.append(labels)
    return targets


def _relabel(labels: dict[str, str], configs: list[dict[str, Any]]) -> dict[str, str] | None:
    """Prometheus relabelling, the actions the job uses (keep, replace), with its defaults
    (separator ';', regex '(.*)' fully anchored, replacement '$1'); None when dropped.

    A small evaluator rather than a library: no package offline implements Prometheus'
    relabelling, and the job here uses two of its actions.
    """
    labels = dict(labels)
    for config in configs:
        value = config.get("separator", ";").join(
            labels.get(name, "") for name in config.get("source_labels", [])
        )
        match = re.fullmatch(config.get("regex", "(.*)"), value)
        action = config.get("action", "replace")
        if action == "keep":
            if not match:
                return None
        elif action == "replace":
            if match:
                template = re.sub(r"\$\{?(\d+)\}?", r"\\\1", config.get("replacement", "$1"))
                labels[config["target_label"]] = match.expand(template)
        else:
            raise AssertionError(f"relabel action {action} is not evaluated here")
    return labels


def _admits(policy: dict[str, Any], source: str, port: int) -> bool:
    """Whether the NetworkPolicy's ingress rules let an address (not a pod: the agent runs on
    the host network, so no pod or namespace selector matches it) reach the port."""
    for rule in policy["spec"]["ingress"]:
        ports = [p["port"] for p in rule.get("ports", [])]
        if ports and port not in ports:
            continue
        peers = rule.get("from")
        if peers is None:
            return True
        for peer in peers:
            block = peer.get("ipBlock")
            if block and ipaddress.ip_address(source) in ipaddress.ip_network(block["cidr"]):
                return True
    return False


@pytest.mark.parametrize("edge", ["nlb", "alb"])
def test_the_agents_scrape_job_reaches_the_pods_metrics_port(edge: str, world: World) -> None:
    """The job in the add-on's configuration, run over the pods of the overlay init.sh writes:
    exactly one target per pod, at the container port named metrics (METRICS_PORT, the
    prometheus.io/port annotation) and the annotated path, labelled as the agent's metric
    declaration selects; and the NetworkPolicy lets the agent in from the nodes' addresses: it
    runs on the host network (the add-on's chart, aws-observability/helm-charts, writes
    hostNetwork: true into its AmazonCloudWatchAgent), so no namespace selector matches it."""
    world.create_stacks(parameters={"LoadBalancerType": edge})
    world.create_cluster()
    run = world.run("init.sh", "-p", PROFILE)
    assert run.returncode == 0, run.stderr
    kinds = rendered(world.root)
    pod = kinds["Deployment"]["spec"]["template"]
    config = kinds["ConfigMap"]["data"]
    addon = _addon_configuration("fes-test-cluster")
    (job,) = addon["agent"]["prometheus"]["config"]["scrape_configs"]
    assert job["kubernetes_sd_configs"] == [{"role": "pod"}]
    relabelled = [_relabel(t, job["relabel_configs"]) for t in _pod_targets(pod, "10.0.4.17", "d")]
    (target,) = [t for t in relabelled if t is not None]
    (metrics,) = [p for p in pod["spec"]["containers"][0]["ports"] if p["name"] == "metrics"]
    port = int(target["__address__"].rsplit(":", 1)[1])
    assert port == metrics["containerPort"] == int(config["METRICS_PORT"])
    assert target["__address__"] == f"10.0.4.17:{port}"
    assert target["__metrics_path__"] == pod["metadata"]["annotations"]["prometheus.io/path"]
    # The agent's metric declaration selects this job's targets by their Service label.
    processor = addon["agent"]["config"]["logs"]["metrics_collected"]["prometheus"]
    (declaration,) = processor["emf_processor"]["metric_declaration"]
    (source,) = declaration["source_labels"]
    assert re.search(declaration["label_matcher"], target[source])
    # A scrape from any node reaches the port; an address outside the VPC does not.
    policy = kinds["NetworkPolicy"]
    for subnet in PRIVATE_SUBNETS.split(","):
        for node in list(ipaddress.ip_network(subnet).hosts())[::100]:
            assert _admits(policy, str(node), port), node
    assert not _admits(policy, "203.0.113.9", port)


def test_the_relabel_evaluator_drops_what_prometheus_drops() -> None:
    """The evaluator above, on a pod without the scrape annotation and on the proxy sidecar's
    container (no ports): both dropped, so an empty target list is not a broken evaluator."""
    addon = _addon_configuration("c")
    (job,) = addon["agent"]["prometheus"]["config"]["scrape_configs"]
    pod = {
        "metadata": {"labels": {"app.kubernetes.io/name": "message-app"}, "annotations": {}},
        "spec": {
            "containers": [{"name": "app", "ports": [{"name": "metrics", "containerPort": 9090}]}]
        },
    }
    assert [_relabel(t, job["relabel_configs"]) for t in _pod_targets(pod, "10.0.4.9", "d")] == [
        None
    ]
    pod["metadata"]["annotations"] = {"prometheus.io/scrape": "true", "prometheus.io/port": "9090"}
    pod["spec"]["initContainers"] = [{"name": "proxy"}]
    kept = [_relabel(t, job["relabel_configs"]) for t in _pod_targets(pod, "10.0.4.9", "d")]
    assert [t and t["__address__"] for t in kept] == ["10.0.4.9:9090", None]
