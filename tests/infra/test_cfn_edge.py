"""cfn/edge.yaml: the ALB option's AWS WAF and access-log bucket, the ALB's alarms, and the app's
own alarms (from its access log and its Prometheus counters), in every rendered variant.

cfn-lint and checkov run over copies rendered per option (nlb or alb; with or without Container
Insights; with the ALB's names given or not), since both tools drop what a false condition
leaves out. The metric filters are checked against a line the app's real access logger writes,
wrapped as the add-on's Fluent Bit ships it; the alarms' metrics against what the filters and the
agent's metric declaration publish.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.support import REPO_ROOT, checkov_report

from .cfn import (
    CFN,
    cfn_lint,
    evaluate,
    lint_problems,
    load_path,
    present,
    rendered_copies,
    resources,
)
from .test_cfn_observability import PUBLISHED, passed_through_unchanged

TEMPLATE = CFN / "edge.yaml"
ALB_SUFFIX = "app/k8s-default-messagea-0123456789/0123456789abcdef"
TG_SUFFIX = "targetgroup/k8s-default-messagea-0123456789/0123456789abcdef"
# The variants: parameters each rendered copy takes as its defaults.
VARIANTS = {
    "nlb": {
        "LoadBalancerType": "nlb",
        "ApplicationLogGroupName": "/aws/containerinsights/c/application",
    },
    "nlb-no-insights": {"LoadBalancerType": "nlb", "ApplicationLogGroupName": ""},
    "alb-first-deploy": {
        "LoadBalancerType": "alb",
        "ApplicationLogGroupName": "/aws/containerinsights/c/application",
    },
    "alb": {
        "LoadBalancerType": "alb",
        "ApplicationLogGroupName": "/aws/containerinsights/c/application",
        "AlbArnSuffix": ALB_SUFFIX,
        "AlbTargetGroupArnSuffix": TG_SUFFIX,
    },
}
# What each variant must create, so a resource dropped by a condition cannot pass unseen.
VARIANT_RESOURCES = {
    "nlb": {"AppRequestsMetricFilter", "App5xxRateAlarm", "AppFailFastAlarm"},
    "nlb-no-insights": {"Nothing"},
    "alb-first-deploy": {"WebAcl", "AccessLogBucket", "App5xxRateAlarm"},
    "alb": {
        "WebAcl", "AlbTarget5xxAlarm", "AlbTargetResponseTimeP99Alarm", "AlbUnhealthyTargetsAlarm",
    },
}  # fmt: skip
# The alarms the issue asks for, per option: on the ALB, target 5xx and target response time
# p99; in both, the app's 5xx rate, p99 latency, fail-fast 503s and saves without a replica;
# and pods refusing requests as too busy (nginx.conf's bound).
ALARMED = {
    "AWS/ApplicationELB": {"HTTPCode_Target_5XX_Count", "TargetResponseTime"},
    "MessageApp/<ClusterName>": {
        "responses_5xx",
        "responses_too_busy",
        "request_duration_ms",
        "messageapp_fail_fast_responses_total",
        "messageapp_saves_without_replica_total",
    },
}


@pytest.fixture(scope="module")
def variants(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    # Quoted as JSON strings, which YAML reads as they are (empty ones too).
    params = {
        name: {key: json.dumps(value) for key, value in values.items()}
        for name, values in VARIANTS.items()
    }
    folders = rendered_copies(tmp_path_factory.mktemp("edge-variants"), [TEMPLATE.name], params)
    return {name: folder / TEMPLATE.name for name, folder in folders.items()}


def _params(template: dict[str, Any], variant: str) -> dict[str, str]:
    defaults = {k: str(v.get("Default", "")) for k, v in template["Parameters"].items()}
    return defaults | VARIANTS[variant]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_each_variant_creates_what_its_option_needs(variant: str, template: dict[str, Any]) -> None:
    made = present(template["Resources"], template, _params(template, variant))
    assert VARIANT_RESOURCES[variant] <= made, sorted(made)
    if VARIANTS[variant]["LoadBalancerType"] == "nlb":
        assert not [r for r in made if r.startswith(("Waf", "WebAcl", "AccessLog", "Alb"))]


def test_cfn_lint_is_clean_in_every_variant(variants: dict[str, Path]) -> None:
    _, findings = cfn_lint(list(variants.values()))
    bad = [f"{Path(m['Filename']).parent.name}: {p}" for m in findings for p in lint_problems([m])]
    assert not bad, bad


def test_checkov_passes_every_variant(variants: dict[str, Path]) -> None:
    report = checkov_report(list(variants.values()), "cloudformation")
    assert [c["check_id"] for c in report["results"]["failed_checks"]] == []
    checked = {
        (Path(c["file_path"]).parent.name, c["resource"])
        for c in report["results"]["passed_checks"]
    }
    assert ("alb", "AWS::WAFv2::WebACL.WebAcl") in checked
    assert ("alb", "AWS::S3::Bucket.AccessLogBucket") in checked
    for skipped in report["results"]["skipped_checks"]:
        assert len(skipped["check_result"].get("suppress_comment", "").split()) >= 5, skipped


def test_the_waf_has_aws_managed_rule_groups_and_a_rate_limit(template: dict[str, Any]) -> None:
    acl = template["Resources"]["WebAcl"]["Properties"]
    assert acl["Scope"] == "REGIONAL" and "Allow" in acl["DefaultAction"]
    rules = {r["Name"]: r for r in acl["Rules"]}
    managed = {
        r["Statement"]["ManagedRuleGroupStatement"]["Name"]
        for r in rules.values()
        if "ManagedRuleGroupStatement" in r["Statement"]
    }
    assert {"AWSManagedRulesCommonRuleSet", "AWSManagedRulesKnownBadInputsRuleSet"} <= managed
    rate = rules["RateLimitPerClient"]
    assert rate["Priority"] == 0, "a flood is counted before anything else is spent on it"
    assert rate["Statement"]["RateBasedStatement"]["Limit"] == {"Ref": "WafRateLimit"}
    # Refused with a reason and a time to come back, not a bare 403.
    response = rate["Action"]["Block"]["CustomResponse"]
    assert response["ResponseCode"] == 429
    assert response["CustomResponseBodyKey"] in acl["CustomResponseBodies"]
    assert {h["Name"] for h in response["ResponseHeaders"]} == {"Retry-After"}
    assert len({r["Priority"] for r in rules.values()}) == len(rules)
    # The session cookie never reaches the WAF's logs.
    logging_config = template["Resources"]["WafLogging"]["Properties"]
    assert {"SingleHeader": {"Name": "cookie"}} in logging_config["RedactedFields"]


def test_the_waf_lets_every_message_the_app_accepts_reach_it(template: dict[str, Any]) -> None:
    """The common rule set blocks bodies over 8 KB; a message of the allowed length is larger
    percent-encoded, so that rule must only count and leave the cap to the app's own 413 page."""
    from app.config import Settings

    cap = Settings.from_env({"REDIS_HOST": "h", "SECRET_KEY": "k" * 32}).max_content_length
    assert cap > 8 * 1024
    (common,) = [
        r
        for r in template["Resources"]["WebAcl"]["Properties"]["Rules"]
        if r["Name"] == "AWSManagedRulesCommonRuleSet"
    ]
    overrides = common["Statement"]["ManagedRuleGroupStatement"]["RuleActionOverrides"]
    assert {"Name": "SizeRestrictions_BODY", "ActionToUse": {"Count": {}}} in overrides


def test_the_access_logs_are_encrypted_private_and_expire(template: dict[str, Any]) -> None:
    bucket = template["Resources"]["AccessLogBucket"]["Properties"]
    (rule,) = bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    # The only encryption ALB access logs support (Elastic Load Balancing, "Enable access logs").
    assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    assert all(bucket["PublicAccessBlockConfiguration"].values())
    (lifecycle,) = bucket["LifecycleConfiguration"]["Rules"]
    assert lifecycle["Status"] == "Enabled" and lifecycle["ExpirationInDays"] > 0
    statements = template["Resources"]["AccessLogBucketPolicy"]["Properties"]["PolicyDocument"][
        "Statement"
    ]
    (write,) = [s for s in statements if s["Effect"] == "Allow"]
    assert write["Action"] == "s3:PutObject"
    assert write["Resource"] == {
        "Fn::Sub": "${AccessLogBucket.Arn}/alb/AWSLogs/${AWS::AccountId}/*"
    }
    # Elastic Load Balancing's account in the older Regions, its service principal elsewhere.
    condition, legacy, newer = write["Principal"]["Fn::If"]
    assert newer == {"Service": "logdelivery.elasticloadbalancing.amazonaws.com"}
    account = legacy["AWS"]["Fn::Sub"][1]["Account"]
    assert account == {"Fn::FindInMap": ["ElbLogDelivery", {"Ref": "AWS::Region"}, "Account"]}
    mapped = set(template["Mappings"]["ElbLogDelivery"])
    for region in mapped:
        assert evaluate({"Condition": condition}, template, {"AWS::Region": region}), region
    assert not evaluate({"Condition": condition}, template, {"AWS::Region": "ap-southeast-3"})
    assert {"eu-central-1", "us-east-1"} <= mapped


def _metric_stats(props: dict[str, Any]) -> list[dict[str, Any]]:
    stats = [props] if "MetricName" in props else []
    for metric in props.get("Metrics", []):
        if "MetricStat" in metric:
            stats.append(metric["MetricStat"]["Metric"])
    return stats


def _namespace(value: Any) -> str:
    return (
        value["Fn::Sub"].replace("${ClusterName}", "<ClusterName>")
        if isinstance(value, dict)
        else value
    )


def test_every_alarm_watches_a_published_metric_and_notifies_the_topic(
    template: dict[str, Any],
) -> None:
    watched: dict[str, set[str]] = {}
    for name, alarm in resources(template, "AWS::CloudWatch::Alarm").items():
        props = alarm["Properties"]
        assert props["AlarmActions"] == props["OKActions"] == [{"Ref": "AlarmTopicArn"}], name
        # Missing data is fine, but for the one alarm that is about data going missing.
        missing = "breaching" if name == "AppMetricsMissingAlarm" else "notBreaching"
        assert props["TreatMissingData"] == missing, name
        for stat in _metric_stats(props):
            namespace = _namespace(stat["Namespace"])
            assert stat["MetricName"] in PUBLISHED[namespace], (name, stat["MetricName"])
            dimensions = frozenset(d["Name"] for d in stat.get("Dimensions", []))
            assert dimensions in PUBLISHED[namespace][stat["MetricName"]], (name, dimensions)
            watched.setdefault(namespace, set()).add(stat["MetricName"])
        if "Metrics" in props:
            ids = {m["Id"] for m in props["Metrics"]}
            (result,) = [m for m in props["Metrics"] if m.get("ReturnData", True)]
            used = set(re.findall(r"\b[a-z][a-z0-9_]*\b", result["Expression"]))
            assert used - {"fill", "if"} <= ids, (name, used - ids)
    for namespace, metrics in ALARMED.items():
        assert metrics <= watched.get(namespace, set()), (namespace, metrics)


def test_the_missing_metrics_alarm_counts_samples_of_a_series_every_pod_sends(
    template: dict[str, Any],
) -> None:
    """A counter without labels shows (at 0) from each worker's start, so every scrape of every
    pod sends a sample of it (tests/system/test_metrics.py checks it is there before any
    request): too few samples means the scrape stopped, not that all is quiet."""
    from prometheus_client import REGISTRY

    import app.metrics  # noqa: F401  (registers the app's metrics)

    props = resources(template, "AWS::CloudWatch::Alarm")["AppMetricsMissingAlarm"]["Properties"]
    assert (props["Statistic"], props["ComparisonOperator"], props["Threshold"]) == (
        "SampleCount", "LessThanThreshold", 1
    )  # fmt: skip
    (family,) = [f for f in REGISTRY.collect() if f"{f.name}_total" == props["MetricName"]]
    assert family.type == "counter"
    assert [s.labels for s in family.samples if s.name == props["MetricName"]] == [{}]


def test_the_app_metrics_are_published_as_the_alarms_read_them(template: dict[str, Any]) -> None:
    """The metric filters and the add-on agent's metric declaration publish exactly the app
    metrics PUBLISHED lists (which the alarms and the dashboard are checked against)."""
    filters = resources(template, "AWS::Logs::MetricFilter")
    from_logs = {}
    for resource in filters.values():
        (transformation,) = resource["Properties"]["MetricTransformations"]
        assert _namespace(transformation["MetricNamespace"]) == "MessageApp/<ClusterName>"
        from_logs[transformation["MetricName"]] = {frozenset()}
    observability = load_path(CFN / "observability.yaml")
    text = observability["Resources"]["CloudWatchObservabilityAddon"]["Properties"][
        "ConfigurationValues"
    ]["Fn::Sub"]
    values = {"ClusterName": "<ClusterName>", "AWS::Region": "eu-central-1"}
    config = json.loads(re.sub(r"\$\{([^}]+)\}", lambda m: values[m[1]], text))
    processor = config["agent"]["config"]["logs"]["metrics_collected"]["prometheus"]
    assert processor["emf_processor"]["metric_namespace"] == "MessageApp/<ClusterName>"
    (declaration,) = processor["emf_processor"]["metric_declaration"]
    (dimensions,) = declaration["dimensions"]
    from_prometheus = {
        selector.strip("^$"): {frozenset(dimensions)}
        for selector in declaration["metric_selectors"]
    }
    assert {**from_logs, **from_prometheus} == PUBLISHED["MessageApp/<ClusterName>"]


# Metrics the "store" helper is adding (issue 19): the alarm waits for it, the test says so.
PENDING_APP_METRICS = {"messageapp_saves_without_replica_total"}


def test_the_scraped_counters_are_counters_the_app_defines() -> None:
    """The agent takes counters only (it drops histograms); every one it selects is a counter
    of the app's registry, sample name included (prometheus_client adds _total)."""
    from prometheus_client import REGISTRY

    import app.metrics  # noqa: F401  (registers the app's metrics)

    samples = {
        f"{family.name}_total"
        for family in REGISTRY.collect()
        if family.type == "counter" and family.name.startswith("messageapp_")
    }
    selected = set(PUBLISHED["MessageApp/<ClusterName>"]) - {
        "requests",
        "responses_5xx",
        "responses_too_busy",
        "request_duration_ms",
    }
    assert selected - PENDING_APP_METRICS <= samples, sorted(selected - samples)


def _fluent_bit_record(line: str, container: str) -> dict[str, Any]:
    """A container's log line as the add-on's Fluent Bit ships it to the application log group:
    the kubernetes filter's pod fields, and with Merge_Log the JSON line parsed under
    log_processed (its Merge_Log_Key), as aws-observability/helm-charts configures it."""
    return {
        "time": "2026-12-06T10:00:00.000000000Z",
        "stream": "stdout",
        "log": line,
        "log_processed": json.loads(line),
        "kubernetes": {
            "pod_name": "message-app-6d5f8c7b9-x2k4q",
            "namespace_name": "default",
            "container_name": container,
            "host": "i-0123456789abcdef0",
        },
    }


# CloudWatch Logs' JSON filter patterns, as far as cfn/edge.yaml uses them: `{ ... }` around
# comparisons of a selector with a quoted string (`*` matching any run of characters) or a
# number, joined by && and || and grouped by parentheses. AWS's own evaluator is not available
# offline (moto's logs backend matches plain terms only), so the filters are evaluated here.
_TOKEN = re.compile(
    r'\s*(\(|\)|&&|\|\||(\$\.[\w.]+)\s*(=|!=|>=|<=|>|<)\s*("[^"]*"|-?\d+(?:\.\d+)?))'
)


def _selectors(pattern: str) -> dict[str, list[str]]:
    """The JSON selectors of a metric filter pattern with the literals they are compared with
    (read with _TOKEN, as _filter_matches reads them)."""
    found: dict[str, list[str]] = {}
    for token in _TOKEN.finditer(pattern):
        if token.group(2) is not None:
            found.setdefault(token.group(2), []).append(token.group(4).strip('"'))
    return found


def _lookup(record: dict[str, Any], selector: str) -> Any:
    value: Any = record
    for key in selector[2:].split("."):
        value = value[key]
    return value


def test_the_metric_filters_name_what_the_app_logs(template: dict[str, Any]) -> None:
    """Every field a filter selects is in a line the app's real gunicorn access logger writes (or
    nginx's, for the nginx side), with the type compared; every string compared is a value those
    lines carry (the logger names, the containers, the pods' name prefix)."""
    from app.logs import GunicornLogger, JsonFormatter

    logger = logging.getLogger("gunicorn.access")
    cfg = SimpleNamespace(accesslog="-", logconfig=None, syslog=False)
    captured: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: captured.append(JsonFormatter().format(record))  # type: ignore[method-assign]
    gunicorn_logger = GunicornLogger.__new__(GunicornLogger)
    gunicorn_logger.cfg = cfg
    gunicorn_logger.access_log = logger
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        response = SimpleNamespace(status_code=503, headers=[("X-Served-By", "a")], sent=10)
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "REMOTE_ADDR": "10.0.1.5"}
        gunicorn_logger.access(response, None, environ, timedelta(milliseconds=12.5))
    finally:
        logger.removeHandler(handler)
    (line,) = captured
    app_record = _fluent_bit_record(line, "app")
    nginx_conf = (REPO_ROOT / "nginx.conf").read_text()
    assert '"logger": "nginx"' in nginx_conf and '"status": $status' in nginx_conf
    nginx_record = _fluent_bit_record(
        json.dumps({"logger": "nginx", "status": 502, "message": "GET / 502"}), "proxy"
    )
    deployment = (REPO_ROOT / "k8s" / "deployment.yaml").read_text()
    probed = set(re.findall(r"httpGet:\s+path: (/\w+)", deployment))
    assert probed == {"/healthz", "/readyz"}
    seen_values = {
        "gunicorn.access",
        "nginx",
        "app",
        "proxy",
        "message-app-*",
        *probed,  # the paths of the probes, left out of the counts
    }
    for name, resource in resources(template, "AWS::Logs::MetricFilter").items():
        props = resource["Properties"]
        assert props["LogGroupName"] == {"Ref": "ApplicationLogGroupName"}, name
        selectors = _selectors(props["FilterPattern"])
        assert selectors, name
        for selector, literals in selectors.items():
            record = nginx_record if "nginx" in literals else app_record
            value = _lookup(record, selector)
            for literal in literals:
                if literal.isdigit():
                    assert isinstance(value, int), (name, selector)
                else:
                    assert literal in seen_values, (name, selector, literal)
        (transformation,) = props["MetricTransformations"]
        if transformation["MetricValue"].startswith("$."):
            assert isinstance(_lookup(app_record, transformation["MetricValue"]), float | int)
    assert app_record["log_processed"]["status"] == 503
    assert app_record["kubernetes"]["pod_name"].startswith("message-app-")


def _filter_matches(pattern: str, record: dict[str, Any]) -> bool:
    body = pattern.strip()
    assert body.startswith("{") and body.endswith("}"), pattern
    tokens: list[Any] = []
    rest = body[1:-1].strip()
    while rest:
        found = _TOKEN.match(rest)
        assert found, (pattern, rest)
        tokens.append(found.group(1) if found.group(2) is None else found.groups()[1:])
        rest = rest[found.end() :].strip()

    def compare(selector: str, op: str, literal: str) -> bool:
        try:
            value = _lookup(record, selector)
        except KeyError:
            return False
        if literal.startswith('"'):
            matched = re.fullmatch(".*".join(map(re.escape, literal[1:-1].split("*"))), str(value))
            return (matched is not None) == (op == "=")
        number = float(literal)
        return {"=": value == number, "!=": value != number, ">=": value >= number,
                "<=": value <= number, ">": value > number, "<": value < number}[op]  # fmt: skip

    def joined(i: int, level: int) -> tuple[bool, int]:
        """Operands joined by || (level 0) or && (level 1; && binds tighter), from token i."""
        if level == 2:  # one operand: a comparison, or an expression in parentheses
            if tokens[i] == "(":
                value, i = joined(i + 1, 0)
                assert tokens[i] == ")", pattern
                return value, i + 1
            return compare(*tokens[i]), i + 1
        value, i = joined(i, level + 1)
        while i < len(tokens) and tokens[i] == ("||", "&&")[level]:
            other, i = joined(i + 1, level + 1)
            value = (value or other) if level == 0 else (value and other)
        return value, i

    value, end = joined(0, 0)
    assert end == len(tokens), pattern
    return value


def test_the_access_log_metrics_count_users_requests_not_health_checks(
    template: dict[str, Any],
) -> None:
    """Each metric filter, evaluated on lines as the app's gunicorn and nginx write them: the
    requests and their 5xx count every user request, whoever answered it, and no probe (the
    kubelet's and the load balancer's, some 20 a minute a pod, which made a 5 % error rate of
    users look like 4 % at 60 requests a minute and filled the alarm's 20-request floor alone:
    found by review); the duration is gunicorn's, for user requests."""

    def app(method: str, path: str, status: int) -> dict[str, Any]:
        line = {"logger": "gunicorn.access", "method": method, "path": path, "status": status,
                "duration_ms": 1.5}  # fmt: skip
        return _fluent_bit_record(json.dumps(line), "app")

    def nginx(method: str, path: str, status: int) -> dict[str, Any]:
        line = {"logger": "nginx", "method": method, "path": path, "status": status}
        return _fluent_bit_record(json.dumps(line), "proxy")

    lines = {
        "page": app("GET", "/", 200),
        "save refused": app("POST", "/persistMessage", 503),
        "gunicorn gone": nginx("GET", "/", 502),
        "too busy": nginx("GET", "/", 503),
        "an internet probe, too busy": nginx("GET", "/healthz", 503),
        "too large": nginx("POST", "/persistMessage", 413),
        "liveness": app("GET", "/healthz", 200),
        "readiness": app("GET", "/readyz", 200),
        "readiness, gunicorn gone": nginx("GET", "/readyz", 502),
    }
    other_pod = app("GET", "/", 500)
    other_pod["kubernetes"]["pod_name"] = "cloudwatch-agent-abcde"
    lines["another pod"] = other_pod
    counted = {
        resource["Properties"]["MetricTransformations"][0]["MetricName"]: sorted(
            name
            for name, record in lines.items()
            if _filter_matches(resource["Properties"]["FilterPattern"], record)
        )
        for resource in resources(template, "AWS::Logs::MetricFilter").values()
    }
    assert counted == {
        "requests": ["gunicorn gone", "page", "save refused", "too busy", "too large"],
        "responses_5xx": ["gunicorn gone", "save refused", "too busy"],
        "request_duration_ms": ["page", "save refused"],
        "responses_too_busy": ["too busy"],  # nginx's refusals past the pod's bound, no other
    }


def test_main_passes_the_edge_parameters_through_unchanged(template: dict[str, Any]) -> None:
    passed = passed_through_unchanged("EdgeStack", template)
    assert {"LoadBalancerType", "AlbArnSuffix", "AlbTargetGroupArnSuffix", "WafRateLimit"} <= passed
