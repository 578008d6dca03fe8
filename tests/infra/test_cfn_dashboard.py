"""cfn/dashboard.yaml: the CloudWatch dashboard of the service's health.

A nested stack of its own, because with the alarms in cfn/observability.yaml it made one template
over CloudFormation's 51,200-byte --template-body limit. cfn-lint and checkov check it with the
other templates in test_cfn_lint.py (once per cache mode). Here: the dashboard body rendered and
parsed as JSON in each cache mode, and every metric it names checked against what AWS publishes
(test_cfn_observability.PUBLISHED, which the alarms are checked against too), for every node (or
Serverless cache) the mode has.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest

from .cfn import CFN, evaluate, resources
from .test_cfn_observability import (
    LB_SUFFIX,
    PUBLISHED,
    TG_SUFFIX,
    _node_suffixes,
    passed_through_unchanged,
)

TEMPLATE = CFN / "dashboard.yaml"

# What the dashboard shows in every cache mode, per load-balancer type,
DASHBOARD_METRICS = {
    "nlb": {
        "NewFlowCount",
        "ActiveFlowCount",
        "TCP_Target_Reset_Count",
        "TCP_ELB_Reset_Count",
        "HealthyHostCount",
        "UnHealthyHostCount",
        "service_number_of_running_pods",
    },
    "alb": {
        "RequestCount",
        "HTTPCode_Target_5XX_Count",
        "HTTPCode_ELB_5XX_Count",
        "TargetResponseTime",
        "HealthyHostCount",
        "UnHealthyHostCount",
        "service_number_of_running_pods",
        "AllowedRequests",
        "BlockedRequests",
    },
}
# ...the app's own: from the access log and from its Prometheus counters (both types),
DASHBOARD_APP_METRICS = {
    "requests",
    "responses_5xx",
    "responses_too_busy",
    "request_duration_ms",
    "messageapp_fail_fast_responses_total",
    "messageapp_saves_without_replica_total",
    "messageapp_redis_errors_total",
}
# ...and of the cache, per mode: every one for each node (or the Serverless cache) the mode has.
DASHBOARD_CACHE_METRICS = {
    "replication-group": {"DatabaseMemoryUsagePercentage", "Evictions"},
    "cluster": {"DatabaseMemoryUsagePercentage", "Evictions"},
    "serverless": {
        "BytesUsedForCache",
        "Evictions",
        "ThrottledCmds",
        "ElastiCacheProcessingUnits",
        "CurrConnections",
        "SuccessfulReadRequestLatency",
        "SuccessfulWriteRequestLatency",
    },
}
# The dimension each mode's cache metrics are published by.
CACHE_DIMENSION = {
    "replication-group": "CacheClusterId",
    "cluster": "CacheClusterId",
    "serverless": "clusterId",
}


def _render(value: Any, template: dict[str, Any], mode: str, lb: str = "nlb") -> str:
    """A string made of Fn::Sub and Fn::If, as CloudFormation resolves it in the given mode
    once every parameter is given.

    Each ${Name} of a parameter becomes <Name>: still valid JSON inside a string, and the
    checks can see which one it was. A small resolver rather than a library: none resolves
    intrinsic functions offline, and this template uses only these two.
    """
    if isinstance(value, str):
        return value
    ((function, args),) = value.items()
    if function == "Fn::If":
        condition, then, otherwise = args
        # Every parameter given (the load balancer's names too), in this cache mode.
        given = {name: f"<{name}>" for name in template["Parameters"]}
        given |= {"CacheMode": mode, "LoadBalancerType": lb}
        chosen = then if evaluate({"Condition": condition}, template, given) else otherwise
        return _render(chosen, template, mode, lb)
    assert function == "Fn::Sub", function
    text, variables = (args, {}) if isinstance(args, str) else args
    values = {name: _render(v, template, mode, lb) for name, v in variables.items()}
    names = set(re.findall(r"\$\{([^}]+)\}", text))
    assert names <= {*template["Parameters"], "AWS::Region", *values}, names
    return re.sub(r"\$\{([^}]+)\}", lambda m: values.get(m[1], f"<{m[1]}>"), text)


def _body(
    template: dict[str, Any], mode: str = "replication-group", lb: str = "nlb"
) -> dict[str, Any]:
    (dashboard,) = resources(template, "AWS::CloudWatch::Dashboard").values()
    return json.loads(_render(dashboard["Properties"]["DashboardBody"], template, mode, lb))


def _edit_body(template: dict[str, Any], edit: Callable[[str], str]) -> dict[str, Any]:
    """A copy of the template with `edit` applied to every string of the dashboard body."""

    def walk(value: Any) -> Any:
        if isinstance(value, str):
            return edit(value)
        if isinstance(value, list):
            return [walk(v) for v in value]
        return {k: walk(v) for k, v in value.items()}

    copy = json.loads(json.dumps(template))
    (dashboard,) = resources(copy, "AWS::CloudWatch::Dashboard").values()
    dashboard["Properties"]["DashboardBody"] = walk(dashboard["Properties"]["DashboardBody"])
    return copy


# The parameters that may name each load-balancer dimension: the NLB's or the ALB's.
LB_DIMENSION_PARAMETERS = {
    "LoadBalancer": {"<LoadBalancerArnSuffix>", "<AlbArnSuffix>"},
    "TargetGroup": {"<TargetGroupArnSuffix>", "<AlbTargetGroupArnSuffix>"},
}


def _dashboard_metrics(
    template: dict[str, Any], mode: str = "replication-group", lb: str = "nlb"
) -> tuple[set[str], set[str]]:
    """The metrics the dashboard shows and the statistics it uses; fails on an unknown one."""
    body = _body(template, mode, lb)
    shown = set()
    for widget in body["widgets"]:
        assert widget["type"] in ("metric", "text")
        if widget["type"] == "text":
            continue
        for line in widget["properties"]["metrics"]:
            if isinstance(line[0], dict):  # an expression: metric math or a SEARCH
                search = re.search(r"SEARCH\('\{([^,}]+),([^}]*)\} (.*)'", line[0]["expression"])
                if search:
                    namespace, dimensions, terms = search.groups()
                    (metric,) = re.findall(r'MetricName="([^"]+)"', terms)
                    assert frozenset(dimensions.split(",")) in PUBLISHED[namespace][metric]
                    shown.add(metric)
                continue
            namespace, metric, *rest = line
            options = rest.pop() if rest and isinstance(rest[-1], dict) else {}
            assert metric in PUBLISHED[namespace], metric
            dimensions = dict(zip(rest[0::2], rest[1::2], strict=True))
            assert frozenset(dimensions) in PUBLISHED[namespace][metric], (metric, rest)
            for dimension, parameters in LB_DIMENSION_PARAMETERS.items():
                assert dimensions.get(dimension, next(iter(parameters))) in parameters, metric
            if options.get("visible", True) or any(
                options["id"] in str(other[0]) for other in widget["properties"]["metrics"]
            ):
                shown.add(metric)
    stats = {
        line[-1].get("stat")
        for widget in body["widgets"]
        if widget["type"] == "metric"
        for line in widget["properties"]["metrics"]
        if isinstance(line[-1], dict) and "stat" in line[-1]
    }
    return shown, stats


@pytest.mark.parametrize("lb", ["nlb", "alb"])
@pytest.mark.parametrize("mode", sorted(DASHBOARD_CACHE_METRICS))
def test_the_dashboard_body_is_json_naming_published_metrics(
    mode: str, lb: str, template: dict[str, Any]
) -> None:
    shown, stats = _dashboard_metrics(template, mode, lb)
    assert shown >= DASHBOARD_METRICS[lb] | DASHBOARD_APP_METRICS | DASHBOARD_CACHE_METRICS[mode]
    assert stats <= {"Sum", "Maximum", "Minimum", "Average", "p50", "p99"}, stats
    # Every widget on the 24-column grid, none over another.
    taken: set[tuple[int, int]] = set()
    for widget in _body(template, mode, lb)["widgets"]:
        assert widget["x"] >= 0 and widget["x"] + widget["width"] <= 24, widget
        cells = {
            (widget["x"] + dx, widget["y"] + dy)
            for dx in range(widget["width"])
            for dy in range(widget["height"])
        }
        assert not cells & taken, widget
        taken |= cells


@pytest.mark.parametrize("mode", sorted(DASHBOARD_CACHE_METRICS))
def test_the_dashboard_draws_every_cache_node_of_its_mode_and_no_other(
    mode: str, template: dict[str, Any]
) -> None:
    """Each cache metric by the mode's dimension, for every node the mode can have, and no more."""
    dimension = CACHE_DIMENSION[mode]
    drawn: dict[str, set[str]] = {}
    for widget in _body(template, mode)["widgets"]:
        for line in widget["properties"].get("metrics", []):
            if isinstance(line[0], dict):
                # A SEARCH over the cache would draw whatever matches: these checks could not see.
                assert "AWS/ElastiCache" not in line[0]["expression"], line
                continue
            namespace, metric, *rest = line
            if namespace != "AWS/ElastiCache":
                continue
            if rest and isinstance(rest[-1], dict):
                rest.pop()
            assert rest[0::2] == [dimension], (metric, rest)
            drawn.setdefault(metric, set()).add(rest[1])
    ids = {f"<CacheId>{suffix}" for suffix in _node_suffixes()[mode]}
    assert drawn == dict.fromkeys(DASHBOARD_CACHE_METRICS[mode], ids)


def test_the_dashboard_draws_request_rate_errors_and_latency_in_both_types(
    template: dict[str, Any],
) -> None:
    """An NLB has no request, 5xx or latency metric: those come from the app's access log in
    both types (and, with the ALB, from the ALB too); the note that said they were missing is
    gone, and the WAF widget or its note says where AWS WAF is."""
    for lb in ("nlb", "alb"):
        body = _body(template, lb=lb)
        notes = " ".join(
            w["properties"]["markdown"] for w in body["widgets"] if w["type"] == "text"
        )
        assert "not on this dashboard" not in notes
        assert ("AWS WAF" in notes) == (lb == "nlb"), notes
        titles = [w["properties"]["title"] for w in body["widgets"] if w["type"] == "metric"]
        assert any("5xx" in t and "access log" in t for t in titles), titles
        assert any("p99" in t and "access log" in t for t in titles), titles


@pytest.mark.parametrize("mode", sorted(DASHBOARD_CACHE_METRICS))
def test_the_dashboard_json_check_catches_a_broken_body(
    mode: str, template: dict[str, Any]
) -> None:
    broken = _edit_body(template, lambda s: s.replace("]", "", 1))
    with pytest.raises(json.JSONDecodeError):
        _body(broken, mode)
    renamed = _edit_body(template, lambda s: s.replace('"Evictions"', '"Evicted"'))
    with pytest.raises(AssertionError):
        _dashboard_metrics(renamed, mode)
    # Target health is published per target group: by load balancer alone it does not exist.
    removed = []

    def untarget(text: str) -> str:
        text, count = re.subn(r'"TargetGroup",\s*"\$\{TargetGroupArnSuffix\}",\s*', "", text)
        removed.append(count)
        return text

    untargeted = _edit_body(template, untarget)
    assert sum(removed) == 2
    with pytest.raises(AssertionError):
        _dashboard_metrics(untargeted, mode)


def test_main_passes_the_dashboard_parameters_through_unchanged(
    template: dict[str, Any],
) -> None:
    passed = passed_through_unchanged("DashboardStack", template)
    assert {"LoadBalancerArnSuffix", "TargetGroupArnSuffix", "CacheMode", "CacheId"} <= passed


def _resolve(value: Any, template: dict[str, Any], params: dict[str, str]) -> str:
    """The dashboard body as CloudFormation sends it for these parameter values: Fn::If on any
    condition (evaluated as test_cfn does), Fn::Sub with the values themselves, empty ones too."""
    if isinstance(value, str):
        return value
    ((function, args),) = value.items()
    if function == "Fn::If":
        condition, then, otherwise = args
        chosen = then if evaluate({"Condition": condition}, template, params) else otherwise
        return _resolve(chosen, template, params)
    assert function == "Fn::Sub", function
    text, variables = (args, {}) if isinstance(args, str) else args
    values = {
        **params,
        "AWS::Region": "eu-central-1",
        **{name: _resolve(v, template, params) for name, v in variables.items()},
    }
    return re.sub(r"\$\{([^}]+)\}", lambda m: values[m[1]], text)


def _parameter_defaults(template: dict[str, Any]) -> dict[str, str]:
    return {
        name: str(spec.get("Default", f"<{name}>")) for name, spec in template["Parameters"].items()
    }


@pytest.mark.parametrize("mode", sorted(DASHBOARD_CACHE_METRICS))
@pytest.mark.parametrize(
    "names",
    [
        {},
        {"LoadBalancerArnSuffix": LB_SUFFIX},
        {"LoadBalancerArnSuffix": LB_SUFFIX, "TargetGroupArnSuffix": TG_SUFFIX},
    ],
    ids=["first-deploy", "load-balancer-only", "both-names"],
)
def test_every_widget_names_real_dimension_values_before_the_load_balancer_exists(
    mode: str, names: dict[str, str], template: dict[str, Any]
) -> None:
    """On the first deploy the load balancer's names are unknown (empty parameters): a widget
    may not name a dimension with an empty value, which PutDashboard may refuse (and a refused
    dashboard rolls the whole main stack back after the cluster and the cache were made).
    Until the names are given the dashboard says where to find them instead."""
    params = {**_parameter_defaults(template), "CacheMode": mode, "CacheId": "fes-cache", **names}
    params["ClusterName"] = "fes-cluster"
    (dashboard,) = resources(template, "AWS::CloudWatch::Dashboard").values()
    body = json.loads(_resolve(dashboard["Properties"]["DashboardBody"], template, params))
    shown = set()
    for widget in body["widgets"]:
        for line in widget["properties"].get("metrics", []):
            if isinstance(line[0], dict):
                continue
            _, metric, *rest = line
            if rest and isinstance(rest[-1], dict):
                rest.pop()
            dimensions = dict(zip(rest[0::2], rest[1::2], strict=True))
            assert all(dimensions.values()), (metric, dimensions)
            shown.add(metric)
    has_lb = bool(names.get("LoadBalancerArnSuffix"))
    has_tg = has_lb and bool(names.get("TargetGroupArnSuffix"))
    assert ("NewFlowCount" in shown) == has_lb
    assert ("HealthyHostCount" in shown) == has_tg
    notes = " ".join(w["properties"]["markdown"] for w in body["widgets"] if w["type"] == "text")
    assert ("TargetGroupArnSuffix" in notes) == (not has_tg), notes
