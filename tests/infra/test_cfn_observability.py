"""cfn/observability.yaml: the add-on and alarms the operators rely on.

The templates' general checks (cfn-lint and checkov on every template, nested-stack wiring) are
in test_cfn_lint.py and test_cfn_stacks.py, the dashboard's (cfn/dashboard.yaml) in
test_cfn_dashboard.py, which shares the list of published metrics below. Here: the same tools
on a copy with every optional resource switched on (both tools drop resources whose condition is
false with the default parameters, so the add-on's IAM role and log groups would otherwise go
unchecked), and every metric the alarms name checked against what AWS publishes, for every node
(or Serverless cache) the mode has.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import checkov_report

from .cfn import CFN, cfn_lint, load_path, present, resources, walk

TEMPLATE = CFN / "observability.yaml"
K8S_POLICY = CFN.parent / "k8s" / "networkpolicy.yaml"

# Metrics and the dimension sets each is published with, as AWS documents them:
# - ElastiCache: "Host-level metrics" and "Metrics for Valkey and Redis OSS" (ElastiCache user
#   guide), per node by CacheClusterId; "Serverless metrics and events for Valkey and Redis OSS"
#   (docs.aws.amazon.com/AmazonElastiCache/latest/dg/serverless-metrics-events-redis.html), per
#   Serverless cache by clusterId;
# - Network Load Balancer: "CloudWatch metrics for your Network Load Balancer"
#   (docs.aws.amazon.com/elasticloadbalancing/latest/network/load-balancer-cloudwatch-metrics.html):
#   flows, bytes and resets by LoadBalancer (or AvailabilityZone, LoadBalancer); target health
#   only by TargetGroup with LoadBalancer (or with AvailabilityZone too). An NLB publishes no HTTP
#   status codes, request counts or latencies: those are AWS/ELB and AWS/ApplicationELB metrics;
# - Container Insights: "Amazon EKS and Kubernetes Container Insights metrics".
_NODE = {frozenset({"CacheClusterId"})}
_SERVERLESS = {frozenset({"clusterId"})}
_LB = {frozenset({"LoadBalancer"}), frozenset({"AvailabilityZone", "LoadBalancer"})}
_TARGETS = {
    frozenset({"LoadBalancer", "TargetGroup"}),
    frozenset({"AvailabilityZone", "LoadBalancer", "TargetGroup"}),
}
_SERVICE = {frozenset({"ClusterName", "Namespace", "Service"}), frozenset({"ClusterName"})}
PUBLISHED: dict[str, dict[str, set[frozenset[str]]]] = {
    "AWS/ElastiCache": {
        metric: _NODE
        for metric in (
            "CPUUtilization",
            "EngineCPUUtilization",
            "DatabaseMemoryUsagePercentage",
            "Evictions",
            "ReplicationLag",
            "IsMaster",
            "FreeableMemory",
        )
    }
    | {
        "Evictions": _NODE | _SERVERLESS,
        "CurrConnections": _NODE | _SERVERLESS,
        "ThrottledCmds": _SERVERLESS,
        "ElastiCacheProcessingUnits": _SERVERLESS,
        "BytesUsedForCache": _SERVERLESS,
        "SuccessfulReadRequestLatency": _SERVERLESS,
        "SuccessfulWriteRequestLatency": _SERVERLESS,
    },
    "AWS/NetworkELB": {
        **{
            metric: _LB
            for metric in (
                "ActiveFlowCount",
                "NewFlowCount",
                "ProcessedBytes",
                "TCP_Client_Reset_Count",
                "TCP_ELB_Reset_Count",
                "TCP_Target_Reset_Count",
            )
        },
        "HealthyHostCount": _TARGETS,
        "UnHealthyHostCount": _TARGETS,
    },
    "ContainerInsights": {
        "service_number_of_running_pods": _SERVICE,
        "namespace_number_of_running_pods": {frozenset({"ClusterName", "Namespace"})},
    },
    # Application Load Balancer: "CloudWatch metrics for your Application Load Balancer"
    # (docs.aws.amazon.com/elasticloadbalancing/latest/application/load-balancer-cloudwatch-
    # metrics.html): requests, status codes and target response time by LoadBalancer (or with
    # AvailabilityZone and/or TargetGroup); target health only with TargetGroup.
    "AWS/ApplicationELB": {
        **{
            metric: _LB | {frozenset({"LoadBalancer", "TargetGroup"})}
            for metric in (
                "RequestCount",
                "HTTPCode_Target_5XX_Count",
                "TargetResponseTime",
            )
        },
        "HTTPCode_ELB_5XX_Count": _LB,
        "HealthyHostCount": _TARGETS,
        "UnHealthyHostCount": _TARGETS,
    },
    # AWS WAF: "Monitoring with Amazon CloudWatch" (WAF developer guide), per web ACL, Region
    # and rule (ALL for the whole web ACL).
    "AWS/WAFV2": {
        metric: {frozenset({"WebACL", "Region", "Rule"})}
        for metric in ("AllowedRequests", "BlockedRequests", "CountedRequests")
    },
    # The app's own (cfn/edge.yaml's metric filters, no dimension; the agent's EMF declaration
    # in cfn/observability.yaml, by ClusterName and Service), as the templates name the
    # namespace once rendered (test_cfn_edge checks both sides against this list).
    "MessageApp/<ClusterName>": {
        **{
            name: {frozenset()}
            for name in ("requests", "responses_5xx", "responses_too_busy", "request_duration_ms")
        },
        **{
            name: {frozenset({"ClusterName", "Service"})}
            for name in (
                "messageapp_fail_fast_responses_total",
                "messageapp_saves_without_replica_total",
                "messageapp_redis_errors_total",
            )
        },
    },
}
# The parameter that names each load-balancer dimension's value.
DIMENSION_PARAMETER = {
    "LoadBalancer": "LoadBalancerArnSuffix",
    "TargetGroup": "TargetGroupArnSuffix",
}
# What the alarms watch: the cache's memory, evictions, host and engine CPU, replication lag,
# failover (IsMaster) and Serverless throttling, and the load balancer's target health (no 5xx:
# the NLB has no such metric, see docs/observability.md).
ALARMED = {
    "DatabaseMemoryUsagePercentage",
    "Evictions",
    "CPUUtilization",
    "EngineCPUUtilization",
    "ReplicationLag",
    "IsMaster",
    "UnHealthyHostCount",
    "HealthyHostCount",
    "ThrottledCmds",
}
# Shaped like what Auto Mode makes for the Service (names at most 32 characters, 16 hex digits).
LB_SUFFIX = "net/k8s-default-messagea-0123456789/0123456789abcdef"
TG_SUFFIX = "targetgroup/k8s-default-messagea-0123456789/0123456789abcdef"
# Add-ons EKS Auto Mode runs itself on every node (EKS user guide: "You do not need to install
# the EKS Pod Identity Agent on EKS Auto Mode Clusters"; likewise pod networking, kube-proxy,
# CoreDNS and the EBS CSI driver): declaring them as add-ons would compete with Auto Mode's.
AUTO_MODE_BUILT_IN = {
    "eks-pod-identity-agent",
    "vpc-cni",
    "kube-proxy",
    "coredns",
    "aws-ebs-csi-driver",
}


@pytest.fixture(scope="module")
def everything_on(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy whose defaults switch on the add-on, the e-mail and the load-balancer alarms."""
    text = TEMPLATE.read_text()
    defaults = {
        "LoadBalancerArnSuffix": f'"{LB_SUFFIX}"',
        "TargetGroupArnSuffix": f'"{TG_SUFFIX}"',
        "AlarmEmail": '"ops@example.com"',
        "ContainerInsights": "enabled",
    }
    for name, value in defaults.items():
        text, count = re.subn(
            rf"(\n  {name}:\n(?:    .*\n)*?    Default: ).*\n", rf"\g<1>{value}\n", text
        )
        assert count == 1, name
    path = tmp_path_factory.mktemp("observability") / "observability.yaml"
    path.write_text(text)
    return path


def test_cfn_lint_is_clean_with_every_resource_on(everything_on: Path) -> None:
    status, findings = cfn_lint([everything_on])
    assert status in (0, 8), findings  # 8: informational findings only
    assert [m for m in findings if m["Level"] != "Informational"] == []


def test_checkov_passes_every_resource_with_every_resource_on(everything_on: Path) -> None:
    report = checkov_report(everything_on, "cloudformation")
    assert [c["check_id"] for c in report["results"]["failed_checks"]] == []
    checked = {c["resource"] for c in report["results"]["passed_checks"]}
    # The conditional resources were really looked at, not dropped.
    for resource in (
        "AWS::IAM::Role.CloudWatchAgentRole",
        "AWS::Logs::LogGroup.ApplicationLogGroup",
        "AWS::SNS::Topic.AlarmTopic",
        "AWS::KMS::Key.ObservabilityKey",
    ):
        assert resource in checked


def _metric_stats(value: Any) -> list[dict[str, Any]]:
    """Every {Namespace, MetricName, Dimensions} inside an alarm's properties."""
    return [v for v in walk(value) if isinstance(v, dict) and "MetricName" in v]


def test_every_alarm_watches_a_published_metric_and_notifies_the_topic(
    template: dict[str, Any],
) -> None:
    alarms = resources(template, "AWS::CloudWatch::Alarm")
    watched = set()
    for name, alarm in alarms.items():
        props = alarm["Properties"]
        assert props["AlarmActions"] == [{"Ref": "AlarmTopic"}], name
        assert props["OKActions"] == [{"Ref": "AlarmTopic"}], name
        stats = _metric_stats(props)
        assert stats, name
        for stat in stats:
            published = PUBLISHED[stat["Namespace"]]
            assert stat["MetricName"] in published, (name, stat["MetricName"])
            dimensions = frozenset(d["Name"] for d in stat["Dimensions"])
            assert dimensions in published[stat["MetricName"]], (name, sorted(dimensions))
            for dimension in stat["Dimensions"]:
                if dimension["Name"] in DIMENSION_PARAMETER:
                    parameter = DIMENSION_PARAMETER[dimension["Name"]]
                    assert dimension["Value"] == {"Ref": parameter}, name
            watched.add(stat["MetricName"])
        if "Metrics" in props:
            ids = {m["Id"] for m in props["Metrics"]}
            (result,) = [m for m in props["Metrics"] if m.get("ReturnData", True)]
            used = set(re.findall(r"\b[a-z][a-z0-9_]*\b", result["Expression"]))
            functions = {"fill", "max"}
            assert used - functions <= ids, (name, used - ids)
    assert watched >= ALARMED


def _node_suffixes() -> dict[str, list[str]]:
    """What follows the cache id in the id of each node a mode can have (per main.yaml)."""
    main = load_path(CFN / "main.yaml")
    nodes = 1 + max(int(v) for v in main["Parameters"]["CacheReplicaCount"]["AllowedValues"])
    shards = max(int(v) for v in main["Parameters"]["NumNodeGroups"]["AllowedValues"])
    per_shard = 1 + max(int(v) for v in main["Parameters"]["ReplicasPerNodeGroup"]["AllowedValues"])
    return {
        "replication-group": [f"-{i:03d}" for i in range(1, nodes + 1)],
        "cluster": [
            f"-{s:04d}-{n:03d}" for s in range(1, shards + 1) for n in range(1, per_shard + 1)
        ],
        "serverless": [""],  # the cache itself: Serverless has no nodes to name
    }


def test_cache_alarms_cover_every_node_a_replication_group_can_have(
    template: dict[str, Any],
) -> None:
    suffixes = _node_suffixes()
    expected = {
        "IsReplicationGroup": [f"${{CacheId}}{s}" for s in suffixes["replication-group"]],
        "IsCluster": [f"${{CacheId}}{s}" for s in suffixes["cluster"]],
    }
    seen = set()
    for name, alarm in resources(template, "AWS::CloudWatch::Alarm").items():
        stats = _metric_stats(alarm["Properties"])
        if stats[0]["Namespace"] != "AWS/ElastiCache" or stats[0]["MetricName"] == "IsMaster":
            continue
        if alarm["Condition"] == "IsServerless":
            assert [s["Dimensions"] for s in stats] == [
                [{"Name": "clusterId", "Value": {"Ref": "CacheId"}}]
            ], name
            continue
        members = sorted(d["Value"]["Fn::Sub"] for s in stats for d in s["Dimensions"])
        assert members == expected[alarm["Condition"]], name
        # CloudWatch caps the metrics of one metric-math alarm; keep within 10 entries.
        assert len(alarm["Properties"]["Metrics"]) <= 10, name
        seen.add(alarm["Condition"])
    assert seen == set(expected)


# Which cache alarms each mode has: none may name a node or cache the mode does not create.
MODE_ALARMS = {
    "replication-group": {
        "CacheMemoryAlarm", "CacheEvictionsAlarm", "CacheCpuAlarm", "CacheEngineCpuAlarm",
        "CacheReplicationLagAlarm", "CacheFailoverAlarm",
    },
    "cluster": {
        "ClusterMemoryAlarm", "ClusterEvictionsAlarm", "ClusterCpuAlarm",
        "ClusterEngineCpuAlarm", "ClusterReplicationLagAlarm",
    },
    "serverless": {"ServerlessEvictionsAlarm", "ServerlessThrottledAlarm"},
}  # fmt: skip


@pytest.mark.parametrize("mode", sorted(MODE_ALARMS))
def test_each_cache_mode_gets_only_its_own_cache_alarms(
    mode: str, template: dict[str, Any]
) -> None:
    conditions = template["Conditions"]
    cache_alarms = {
        name
        for name, alarm in resources(template, "AWS::CloudWatch::Alarm").items()
        if _metric_stats(alarm["Properties"])[0]["Namespace"] == "AWS/ElastiCache"
    }
    present = set()
    for name in cache_alarms:
        condition = conditions[template["Resources"][name]["Condition"]]
        ((left, right),) = [condition["Fn::Equals"]]
        assert left == {"Ref": "CacheMode"}, name
        if right == mode:
            present.add(name)
    assert present == MODE_ALARMS[mode]
    allowed = set(template["Parameters"]["CacheMode"]["AllowedValues"])
    assert allowed == set(MODE_ALARMS)


def test_cluster_alarms_fire_where_their_replication_group_twins_do(
    template: dict[str, Any],
) -> None:
    # The same five watches over other node names: the same threshold, comparison and patience.
    twins = ["Memory", "Evictions", "Cpu", "EngineCpu", "ReplicationLag"]
    keys = ("Threshold", "ComparisonOperator", "EvaluationPeriods", "DatapointsToAlarm")
    resources = template["Resources"]
    for twin in twins:
        single = resources[f"Cache{twin}Alarm"]["Properties"]
        cluster = resources[f"Cluster{twin}Alarm"]["Properties"]
        assert {k: cluster.get(k) for k in keys} == {k: single.get(k) for k in keys}, twin


def test_the_topic_is_encrypted_and_mail_is_optional(template: dict[str, Any]) -> None:
    topic = template["Resources"]["AlarmTopic"]["Properties"]
    assert topic["KmsMasterKeyId"] == {"Ref": "ObservabilityKey"}
    (subscription,) = resources(template, "AWS::SNS::Subscription").values()
    assert subscription["Condition"] == "HasEmail"
    assert subscription["Properties"]["Endpoint"] == {"Ref": "AlarmEmail"}
    statements = template["Resources"]["ObservabilityKey"]["Properties"]["KeyPolicy"]["Statement"]
    services = [s["Principal"].get("Service") for s in statements]
    assert "cloudwatch.amazonaws.com" in services


def test_the_add_on_gets_its_role_through_pod_identity(template: dict[str, Any]) -> None:
    addons = {
        a["Properties"]["AddonName"]: a for a in resources(template, "AWS::EKS::Addon").values()
    }
    assert set(addons) == {"amazon-cloudwatch-observability"}
    observability = addons["amazon-cloudwatch-observability"]
    (association,) = observability["Properties"]["PodIdentityAssociations"]
    assert association["ServiceAccount"] == "cloudwatch-agent"
    role = template["Resources"][association["RoleArn"]["Fn::GetAtt"][0]]["Properties"]
    (trust,) = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": "pods.eks.amazonaws.com"}
    assert sorted(trust["Action"]) == ["sts:AssumeRole", "sts:TagSession"]
    assert any("CloudWatchAgentServerPolicy" in p["Fn::Sub"] for p in role["ManagedPolicyArns"])
    # The agent scrapes from its namespace, which the app's NetworkPolicy admits to metrics.
    policy = yaml.safe_load(K8S_POLICY.read_text())
    admitted = json.dumps(policy["spec"]["ingress"])
    assert "amazon-cloudwatch" in admitted


def test_no_add_on_is_declared_twice_or_duplicates_what_auto_mode_runs(
    template: dict[str, Any],
) -> None:
    eks = load_path(CFN / "eks.yaml")
    assert eks["Resources"]["Cluster"]["Properties"]["ComputeConfig"]["Enabled"] is True
    names = [
        a["Properties"]["AddonName"]
        for t in (eks, template)
        for a in resources(t, "AWS::EKS::Addon").values()
    ]
    assert len(names) == len(set(names)), names
    assert not set(names) & AUTO_MODE_BUILT_IN, names
    # Nothing waits on an add-on that no longer exists.
    for name, resource in template["Resources"].items():
        depends = resource.get("DependsOn", [])
        for target in [depends] if isinstance(depends, str) else depends:
            assert target in template["Resources"], (name, target)


def passed_through_unchanged(stack: str, template: dict[str, Any]) -> set[str]:
    """The parameters main.yaml passes to nested `stack`, checked to be its own parameters
    repeated: same default, pattern and choices."""
    main = load_path(CFN / "main.yaml")
    passed = main["Resources"][stack]["Properties"]["Parameters"]
    for name, value in passed.items():
        if value != {"Ref": name}:
            continue  # an output of another stack, not a main parameter
        ours, theirs = main["Parameters"][name], template["Parameters"][name]
        for key in ("Default", "AllowedPattern", "AllowedValues"):
            assert ours.get(key) == theirs.get(key), (name, key)
    return set(passed)


def test_main_passes_the_observability_parameters_through_unchanged(
    template: dict[str, Any],
) -> None:
    passed = passed_through_unchanged("ObservabilityStack", template)
    assert {
        "LoadBalancerArnSuffix", "TargetGroupArnSuffix", "LoadBalancerType", "ContainerInsights"
    } <= passed  # fmt: skip


@pytest.mark.parametrize("edge", ["nlb", "alb"])
def test_the_nlb_alarms_exist_only_in_front_of_an_nlb(template: dict[str, Any], edge: str) -> None:
    """Names kept from an NLB (deploy.sh keeps every parameter not given) after a switch to the
    ALB would have the alarms watch a deleted load balancer, silent for ever; cfn/edge.yaml
    watches the ALB's own."""
    params = {k: str(v.get("Default", "")) for k, v in template["Parameters"].items()}
    params |= {"LoadBalancerArnSuffix": LB_SUFFIX, "TargetGroupArnSuffix": TG_SUFFIX}
    made = present(template["Resources"], template, params | {"LoadBalancerType": edge})
    watching = {
        name
        for name, resource in resources(template, "AWS::CloudWatch::Alarm").items()
        if "TargetGroupArnSuffix" in json.dumps(resource)
    }
    assert len(watching) == 2
    assert (watching <= made) == (edge == "nlb"), sorted(watching & made)


@pytest.mark.parametrize(
    ("parameter", "good", "bad"),
    [
        ("LoadBalancerArnSuffix", LB_SUFFIX, "k8s-default-messagea-0123456789"),
        (
            "LoadBalancerArnSuffix",
            LB_SUFFIX,
            "app/" + LB_SUFFIX[4:],
        ),
        ("TargetGroupArnSuffix", TG_SUFFIX, "k8s-default-messagea-0123456789"),
        ("TargetGroupArnSuffix", TG_SUFFIX, LB_SUFFIX),
    ],
)
def test_load_balancer_parameters_take_cloudwatch_dimension_values(
    template: dict[str, Any], parameter: str, good: str, bad: str
) -> None:
    """The ARN suffix CloudWatch expects, or empty; a bare name (the Classic ELB's) is refused."""
    pattern = re.compile(template["Parameters"][parameter]["AllowedPattern"])
    assert pattern.fullmatch("") and pattern.fullmatch(good)
    assert not pattern.fullmatch(bad)


def test_container_logs_are_kept_for_a_while_and_encrypted(template: dict[str, Any]) -> None:
    groups = resources(template, "AWS::Logs::LogGroup")
    names = sorted(g["Properties"]["LogGroupName"]["Fn::Sub"] for g in groups.values())
    assert names == [
        f"/aws/containerinsights/${{ClusterName}}/{kind}"
        for kind in ("application", "dataplane", "host", "performance", "prometheus")
    ]
    for group in groups.values():
        assert group["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}
        assert group["Properties"]["KmsKeyId"] == {"Fn::GetAtt": ["ObservabilityKey", "Arn"]}
    addon = template["Resources"]["CloudWatchObservabilityAddon"]
    assert set(groups) <= set(addon["DependsOn"]), "the add-on would create them first"


# What EKS Pod Identity sends when it assumes a role, as the EKS User Guide documents it ("Create
# IAM role with trust policy required by EKS Pod Identity", pod-id-role): the principal
# pods.eks.amazonaws.com, the actions sts:AssumeRole and sts:TagSession, and these session tags,
# which a trust policy may condition on (aws:RequestTag/<tag>).
POD_IDENTITY_SESSION_TAGS = {
    "eks-cluster-arn",
    "eks-cluster-name",
    "kubernetes-namespace",
    "kubernetes-service-account",
    "kubernetes-pod-name",
    "kubernetes-pod-uid",
}
# Where the amazon-cloudwatch-observability add-on runs its agent and Fluent Bit.
ADDON_NAMESPACE = "amazon-cloudwatch"


def test_the_agent_role_trusts_pod_identity_as_aws_documents_it(template: dict[str, Any]) -> None:
    """Only documented request keys, each naming this cluster, the add-on's namespace and its
    service account: a condition on a key Pod Identity does not send (or on a value it never
    sends, such as the cluster's ARN as aws:SourceArn) refuses every AssumeRole, and Container
    Insights stays empty."""
    addon = template["Resources"]["CloudWatchObservabilityAddon"]["Properties"]
    (association,) = addon["PodIdentityAssociations"]
    role = template["Resources"][association["RoleArn"]["Fn::GetAtt"][0]]["Properties"]
    (trust,) = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Effect"] == "Allow"
    assert trust["Principal"] == {"Service": "pods.eks.amazonaws.com"}
    assert sorted(trust["Action"]) == ["sts:AssumeRole", "sts:TagSession"]
    assert set(trust["Condition"]) == {"StringEquals"}, trust["Condition"]
    keys = trust["Condition"]["StringEquals"]
    tags = {key.removeprefix("aws:RequestTag/"): value for key, value in keys.items()}
    assert all(key.startswith("aws:RequestTag/") for key in keys), sorted(keys)
    assert set(tags) <= POD_IDENTITY_SESSION_TAGS, sorted(set(tags) - POD_IDENTITY_SESSION_TAGS)
    # The role is this cluster's, and only the add-on's service account may use it.
    cluster = "arn:${AWS::Partition}:eks:${AWS::Region}:${AWS::AccountId}:cluster/${ClusterName}"
    assert tags["eks-cluster-arn"] == {"Fn::Sub": cluster}
    assert tags["kubernetes-namespace"] == ADDON_NAMESPACE
    assert tags["kubernetes-service-account"] == association["ServiceAccount"]
