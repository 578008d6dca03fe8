"""Static checks of the CloudFormation templates in cfn/.

No AWS account exists in CI, so the templates are checked offline: cfn-lint (AWS's own linter,
with the resource schemas) and checkov run once per module, and the structural tests read the
parsed templates to pin the properties the deployment relies on (encryption at rest and in
transit, automatic failover, private routing, least access), which a linter accepts either way.
A canary template with known mistakes goes through each tool in the same run, so a tool that
silently checks nothing cannot make the suite pass.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from tests.support import REPO_ROOT, checkov_report

CFN = REPO_ROOT / "cfn"
PARAMETER_DOC = REPO_ROOT / "docs" / "deploy-aws.md"
TEMPLATE_NAMES = (
    "bootstrap.yaml",
    "main.yaml",
    "network.yaml",
    "securitygroups.yaml",
    "eks.yaml",
    "cache.yaml",
    "observability.yaml",
    "dashboard.yaml",
    "edge.yaml",
)
NESTED = (
    "network.yaml",
    "securitygroups.yaml",
    "eks.yaml",
    "cache.yaml",
    "observability.yaml",
    "dashboard.yaml",
    "edge.yaml",
)
# Regions the linter checks against (availability of resource types and three AZs).
LINT_REGIONS = ("us-east-1", "eu-central-1")

# The names deploy.sh/init.sh rely on (see the scripts' tests); renaming one breaks them.
MAIN_OUTPUTS = {
    "ClusterName",
    "CacheMode",
    "CacheHost",
    "CachePrimaryEndpoint",
    "CachePort",
    "CacheTls",
    "CacheCluster",
    "CacheSecretArn",
    "CacheSecretKey",
    "Region",
    "EcrRepositoryUri",
    "DashboardName",
    "LoadBalancerType",
    "PublicSubnetCidrs",
    "PrivateSubnetCidrs",
}
BOOTSTRAP_OUTPUTS = {"TemplateBucketName", "EcrRepositoryUri", "EcrRepositoryName"}
PARAMETERS_SET_BY_DEPLOY = {
    "TemplateBucket",
    "EcrRepositoryUri",
    "ClusterAdminPrincipalArn",
    "AvailabilityZones",
}
# Outputs only some deployments have (a Condition): init.sh reads them when present.
OPTIONAL_MAIN_OUTPUTS = {
    "CertificateArn",
    "CacheUsername",
    "AuthTokenSecretArn",
    "WebAclArn",
    "AccessLogBucket",
}

# The cache modes (CacheMode) and what each one creates in cfn/cache.yaml, nothing more.
CACHE_MODES = ("replication-group", "cluster", "serverless")
MODE_RESOURCES = {
    "replication-group": {
        "CacheKey", "AuthTokenSecret", "CacheSubnetGroup", "CacheParameterGroup",
        "ReplicationGroup",
    },
    "cluster": {
        "CacheKey", "AuthTokenSecret", "CacheSubnetGroup", "ClusterParameterGroup",
        "ClusterReplicationGroup",
    },
    "serverless": {
        "CacheKey", "UserPasswordSecret", "AppUser", "DisabledDefaultUser", "UserGroup",
        "ServerlessCache",
    },
}  # fmt: skip
# Main-stack outputs each mode has besides MAIN_OUTPUTS (without a certificate).
MODE_MAIN_OUTPUTS = {
    "replication-group": {"AuthTokenSecretArn"},
    "cluster": {"AuthTokenSecretArn"},
    "serverless": {"CacheUsername"},
}
# Parameters for a rendered copy per mode: every conditional resource of the mode switched on
# (usage limits too), since cfn-lint and checkov skip what a false condition leaves out.
MODE_DEFAULTS = {
    "CacheEngine": "valkey",
    "CacheReplicaCount": "1",
    "NumNodeGroups": "3",
    "ReplicasPerNodeGroup": "1",
    "ServerlessMaxDataStorageGB": "10",
    "ServerlessMaxECPUPerSecond": "100000",
}
MODE_TEMPLATES = ("main.yaml", "cache.yaml", "observability.yaml", "dashboard.yaml")

# The original's parameter names and defaults that are kept. Its node-group parameters
# (EKSWorkerNodeInstanceType t3.micro, EKSNodeGroup*Size) went with the node group: EKS Auto Mode
# sizes the nodes (tests/infra/test_capacity.py shows why t3.micro could not run the app).
ORIGINAL_DEFAULTS = {
    "VPCcidr": "10.0.0.0/16",
    "PublicSubnets": "10.0.1.0/24,10.0.2.0/24,10.0.3.0/24",
    "PrivateSubnets": "10.0.4.0/24,10.0.5.0/24,10.0.6.0/24",
    "PrivateDBSubnets": "10.0.7.0/24,10.0.8.0/24,10.0.9.0/24",
    "RedisInstanceType": "cache.t3.micro",
}

# End of EKS standard support per the EKS Kubernetes release calendar
# (docs.aws.amazon.com/eks/latest/userguide/kubernetes-versions.html), as read when the templates
# were written. Adding a version to AllowedValues means adding its date here.
EKS_STANDARD_SUPPORT_END = {
    "1.33": date(2026, 7, 29),
    "1.34": date(2026, 12, 2),
    "1.35": date(2027, 3, 27),
    # On EKS since 2026-06-02 (checked 2026-12-06); standard support is 14 months from the EKS
    # release, so the calendar's exact day may differ by a day or two.
    "1.36": date(2027, 8, 2),
}
TEMPLATES_WRITTEN = date(2026, 11, 30)
# A version on offer must keep standard support for at least this long after the templates were
# checked: a new cluster should not need an upgrade (or extended support) within weeks.
MIN_SUPPORT_LEFT_DAYS = 60

# Engine -> (EngineVersion, parameter group family) accepted by ElastiCache.
CACHE_ENGINES = {"redis": ("7.1", "redis7"), "valkey": ("8.2", "valkey8")}

# Regional virtual-hosted S3 URL of a nested template in the bootstrap bucket.
TEMPLATE_URL = re.compile(
    re.escape("https://${TemplateBucket}.s3.${AWS::Region}.${AWS::URLSuffix}/") + r"([\w.]+)"
)

EKS_LOG_TYPES = {"api", "audit", "authenticator", "controllerManager", "scheduler"}


def _tool(name: str) -> str | None:
    """Find a console script of the test venv first, so CI does not depend on PATH order."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


def _load(name: str) -> dict[str, Any]:
    return _load_path(CFN / name)


def _load_path(path: Path) -> dict[str, Any]:
    """Parse a template with cfn-lint's decoder, which understands the short intrinsic tags."""
    from cfnlint.decode import decode

    template, matches = decode(str(path))
    assert not matches, f"{path.name} does not parse: {matches}"
    assert template is not None
    return template


@pytest.fixture(scope="module")
def templates() -> dict[str, dict[str, Any]]:
    """All templates, parsed once."""
    pytest.importorskip("cfnlint", reason="cfn-lint (pip package cfn-lint) is not installed")
    return {name: _load(name) for name in TEMPLATE_NAMES}


def _resources(template: dict[str, Any], rtype: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == rtype}


def _one(template: dict[str, Any], rtype: str) -> dict[str, Any]:
    found = _resources(template, rtype)
    assert len(found) == 1, f"expected one {rtype}, found {sorted(found)}"
    return next(iter(found.values()))["Properties"]


def _evaluate(value: Any, template: dict[str, Any], params: dict[str, str]) -> Any:
    """Resolve the few intrinsic functions used on parameter-dependent cache settings.

    Lets the tests check what CloudFormation would send for each allowed parameter value
    instead of pinning how the template spells it.
    """
    if isinstance(value, dict) and len(value) == 1:
        ((fn, arg),) = value.items()
        if fn == "Ref" and arg in params:
            return params[arg]
        if fn == "Fn::Equals":
            left, right = (_evaluate(a, template, params) for a in arg)
            return str(left) == str(right)
        if fn == "Fn::Not":
            return not _evaluate(arg[0], template, params)
        if fn == "Fn::Or":
            return any(_evaluate(a, template, params) for a in arg)
        if fn == "Fn::And":
            return all(_evaluate(a, template, params) for a in arg)
        if fn == "Condition":
            return _evaluate(template["Conditions"][arg], template, params)
        if fn == "Fn::If":
            cond, when_true, when_false = arg
            chosen = when_true if _evaluate({"Condition": cond}, template, params) else when_false
            return _evaluate(chosen, template, params)
        if fn == "Fn::Select":
            index, items = (_evaluate(a, template, params) for a in arg)
            return _evaluate(items[int(index)], template, params)
    if isinstance(value, list):
        return [_evaluate(v, template, params) for v in value]
    if isinstance(value, dict) and not any(k == "Ref" or k.startswith("Fn::") for k in value):
        return {k: _evaluate(v, template, params) for k, v in value.items()}
    return value


def _present(section: dict[str, Any], template: dict[str, Any], params: dict[str, str]) -> set:
    """Names in a Resources or Outputs section whose Condition holds for these parameters."""
    return {
        name
        for name, item in section.items()
        if "Condition" not in item or _evaluate({"Condition": item["Condition"]}, template, params)
    }


def _mode_params(mode: str) -> dict[str, str]:
    return {"CacheMode": mode, **MODE_DEFAULTS}


# --- linters -----------------------------------------------------------------------------------

_CANARY_LINT_RULES = {"W2001", "E3002"}


def cfn_lint(files: list[Path]) -> tuple[int, list[dict]]:
    """Run cfn-lint once over ``files``: its exit status and its findings."""
    exe = _tool("cfn-lint")
    if exe is None:
        pytest.skip("cfn-lint (pip package cfn-lint) is not installed")
    proc = subprocess.run(
        [exe, "--format", "json", "--regions", *LINT_REGIONS, "--", *map(str, files)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    # Exit status is a bit mask of the levels found (2 error, 4 warning, 8 info); 1 is a crash.
    assert proc.returncode in range(0, 16, 2), f"cfn-lint crashed: {proc.stderr}"
    return proc.returncode, json.loads(proc.stdout or "[]")


@pytest.fixture(scope="module")
def cfn_lint_findings(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict]]:
    """Run cfn-lint once over every template plus a canary; findings grouped by file name."""
    canary = tmp_path_factory.mktemp("cfn-canary") / "canary.yaml"
    text = (CFN / "network.yaml").read_text()
    text = text.replace("Parameters:\n", "Parameters:\n  Unused:\n    Type: String\n", 1)
    canary.write_text(text.replace("EnableDnsSupport:", "EnableDnsSupportTypo:", 1))
    status, matches = cfn_lint([canary, *(CFN / n for n in TEMPLATE_NAMES)])
    assert status != 0, "the canary's mistakes were not found"
    findings: dict[str, list[dict]] = {n: [] for n in (*TEMPLATE_NAMES, canary.name)}
    for match in matches:
        findings[Path(match["Filename"]).name].append(match)
    return findings


def _lint_problems(findings: list[dict]) -> list[str]:
    """The errors and warnings among cfn-lint findings, one line each."""
    return [
        f"{m['Rule']['Id']} {'/'.join(map(str, m['Location']['Path']))}: {m['Message']}"
        for m in findings
        if m["Level"] in ("Error", "Warning")
    ]


def _lint_counts(findings: dict[str, list[dict]]) -> str:
    lines = []
    for name in TEMPLATE_NAMES:
        levels = Counter(m["Level"] for m in findings[name])
        lines.append(f"{name}: {levels['Error']} errors, {levels['Warning']} warnings")
    return "; ".join(lines)


def test_cfn_lint_reports_the_canary_mistakes(cfn_lint_findings: dict[str, list[dict]]) -> None:
    """Proves the JSON parsing sees both errors and warnings, so zero below means zero."""
    rules = {m["Rule"]["Id"] for m in cfn_lint_findings["canary.yaml"]}
    assert rules >= _CANARY_LINT_RULES, f"canary findings: {rules}"


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_cfn_lint_has_no_errors_or_warnings(
    name: str, cfn_lint_findings: dict[str, list[dict]]
) -> None:
    bad = _lint_problems(cfn_lint_findings[name])
    assert not bad, f"{name}: {bad} (all: {_lint_counts(cfn_lint_findings)})"


def _checkov_grouped(
    files: list[Path], key: Callable[[Path], str], groups: Iterable[str]
) -> dict[str, dict[str, list]]:
    """Run checkov once over ``files``; its passed/failed/skipped checks grouped by ``key``."""
    report = checkov_report(files, "cloudformation")
    assert report["summary"]["parsing_errors"] == 0, report["summary"]
    grouped: dict[str, dict[str, list]] = {
        g: {"passed": [], "failed": [], "skipped": []} for g in groups
    }
    for kind in ("passed", "failed", "skipped"):
        for check in report["results"][f"{kind}_checks"]:
            grouped[key(Path(check["file_path"]))][kind].append(check)
    return grouped


@pytest.fixture(scope="module")
def checkov_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, list]]:
    """Run checkov once over every template plus a canary; results grouped by file name."""
    canary = tmp_path_factory.mktemp("checkov-canary") / "canary.yaml"
    canary.write_text(
        (CFN / "bootstrap.yaml")
        .read_text()
        .replace("BlockPublicAcls: true", "BlockPublicAcls: false")
    )
    files = [CFN / n for n in TEMPLATE_NAMES] + [canary]
    return _checkov_grouped(files, lambda p: p.name, (*TEMPLATE_NAMES, canary.name))


def _failed_checks(result: dict[str, list]) -> list[str]:
    return [f"{c['check_id']} {c['resource']}: {c['check_name']}" for c in result["failed"]]


def _checkov_counts(results: dict[str, dict[str, list]]) -> str:
    return "; ".join(
        f"{n}: {len(r['failed'])} failed, {len(r['passed'])} passed, {len(r['skipped'])} skipped"
        for n, r in results.items()
        if n in TEMPLATE_NAMES
    )


def test_checkov_fails_the_canary(checkov_results: dict[str, dict[str, list]]) -> None:
    failed = {c["check_id"] for c in checkov_results["canary.yaml"]["failed"]}
    assert "CKV_AWS_53" in failed, f"canary failures: {failed}"


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_checkov_has_no_failed_checks(
    name: str, checkov_results: dict[str, dict[str, list]]
) -> None:
    result = checkov_results[name]
    failed = _failed_checks(result)
    assert not failed, f"{name}: {failed} ({_checkov_counts(checkov_results)})"


def _render(name: str, mode: str) -> str:
    """The template with every MODE_DEFAULTS parameter and CacheMode defaulted for one mode."""
    text = (CFN / name).read_text()
    for parameter, value in {**_mode_params(mode)}.items():
        block = re.search(rf"\n  {parameter}:\n(?:    .*\n)+", text)
        if block is None:
            continue
        body = re.sub(r"    Default: .*\n", "", block.group(0))
        body = body.replace(f"  {parameter}:\n", f"  {parameter}:\n    Default: {value}\n", 1)
        text = text.replace(block.group(0), body, 1)
    return text


@pytest.fixture(scope="module")
def mode_copies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One folder per cache mode with MODE_TEMPLATES rendered for that mode."""
    pytest.importorskip("cfnlint", reason="cfn-lint (pip package cfn-lint) is not installed")
    root = tmp_path_factory.mktemp("cfn-modes")
    folders = {}
    for mode in CACHE_MODES:
        folder = root / mode
        folder.mkdir()
        for name in MODE_TEMPLATES:
            (folder / name).write_text(_render(name, mode))
        folders[mode] = folder
    return folders


def test_rendered_copies_default_to_their_mode(mode_copies: dict[str, Path]) -> None:
    for mode, folder in mode_copies.items():
        for name in MODE_TEMPLATES:
            params = _load_path(folder / name)["Parameters"]
            assert params["CacheMode"]["Default"] == mode, (mode, name)


@pytest.fixture(scope="module")
def mode_lint_findings(mode_copies: dict[str, Path]) -> dict[tuple[str, str], list[dict]]:
    """cfn-lint once over every mode's rendered copies; findings by (mode, file name)."""
    files = [folder / n for folder in mode_copies.values() for n in MODE_TEMPLATES]
    _, matches = cfn_lint(files)
    findings: dict[tuple[str, str], list[dict]] = {(f.parent.name, f.name): [] for f in files}
    for match in matches:
        path = Path(match["Filename"])
        findings[(path.parent.name, path.name)].append(match)
    return findings


@pytest.mark.parametrize("mode", CACHE_MODES)
def test_cfn_lint_is_clean_in_every_cache_mode(
    mode: str, mode_lint_findings: dict[tuple[str, str], list[dict]]
) -> None:
    bad = [
        f"{name} {problem}"
        for name in MODE_TEMPLATES
        for problem in _lint_problems(mode_lint_findings[(mode, name)])
    ]
    assert not bad, f"{mode}: {bad}"


@pytest.fixture(scope="module")
def mode_checkov_results(mode_copies: dict[str, Path]) -> dict[str, dict[str, list]]:
    """checkov once over every mode's rendered copies; results by mode."""
    files = [folder / n for folder in mode_copies.values() for n in MODE_TEMPLATES]
    return _checkov_grouped(files, lambda p: p.parent.name, CACHE_MODES)


# What checkov must have looked at in each mode, so a dropped resource cannot pass unseen.
MODE_CHECKED = {
    "replication-group": "AWS::ElastiCache::ReplicationGroup.ReplicationGroup",
    "cluster": "AWS::ElastiCache::ReplicationGroup.ClusterReplicationGroup",
    "serverless": "AWS::SecretsManager::Secret.UserPasswordSecret",
}


@pytest.mark.parametrize("mode", CACHE_MODES)
def test_checkov_passes_every_cache_mode(
    mode: str, mode_checkov_results: dict[str, dict[str, list]]
) -> None:
    result = mode_checkov_results[mode]
    failed = _failed_checks(result)
    assert not failed, f"{mode}: {failed}"
    checked = {c["resource"] for c in result["passed"]}
    assert MODE_CHECKED[mode] in checked, sorted(checked)
    others = {MODE_CHECKED[m] for m in CACHE_MODES if m != mode}
    assert not checked & others, f"{mode} checked another mode's resources: {checked & others}"


def test_every_checkov_skip_gives_a_reason(checkov_results: dict[str, dict[str, list]]) -> None:
    unexplained = [
        f"{n}: {c['check_id']} {c['resource']}"
        for n in TEMPLATE_NAMES
        for c in checkov_results[n]["skipped"]
        if len(c["check_result"].get("suppress_comment", "").split()) < 5
    ]
    assert not unexplained, f"skips without a written reason: {unexplained}"


# --- wiring between the stacks -----------------------------------------------------------------


def test_every_template_has_a_description(templates: dict[str, dict[str, Any]]) -> None:
    assert sorted(p.name for p in CFN.glob("*.yaml")) == sorted(TEMPLATE_NAMES)
    short = [n for n, t in templates.items() if len(str(t.get("Description", "")).split()) < 5]
    assert not short, f"templates without a real Description: {short}"


def test_nested_stacks_pass_exactly_the_child_parameters(
    templates: dict[str, dict[str, Any]],
) -> None:
    """cfn-lint cannot follow TemplateURL, so a renamed child parameter would first fail in AWS."""
    stacks = _resources(templates["main.yaml"], "AWS::CloudFormation::Stack")
    seen = []
    for logical_id, stack in stacks.items():
        url = stack["Properties"]["TemplateURL"]["Fn::Sub"]
        match = TEMPLATE_URL.fullmatch(url)
        assert match, f"{logical_id}: TemplateURL {url!r} is not the regional bucket URL"
        child = templates[match.group(1)]
        seen.append(match.group(1))
        passed = set(stack["Properties"].get("Parameters", {}))
        declared = child.get("Parameters", {})
        required = {k for k, v in declared.items() if "Default" not in v}
        assert passed <= set(declared), f"{logical_id} passes unknown {passed - set(declared)}"
        assert required <= passed, f"{logical_id} misses {required - passed}"
        for ref in _getatt_outputs(stack["Properties"].get("Parameters", {})):
            source, output = ref
            source_file = _template_of(stacks[source])
            assert output in templates[source_file]["Outputs"], f"{source_file} lacks {output}"
    assert sorted(seen) == sorted(NESTED)


def _template_of(stack: dict[str, Any]) -> str:
    return stack["Properties"]["TemplateURL"]["Fn::Sub"].rsplit("/", 1)[1]


def _getatt_outputs(value: Any) -> list[tuple[str, str]]:
    """(nested stack, output name) of every GetAtt Stack.Outputs.X inside value."""
    getatts = [v["Fn::GetAtt"] for v in _walk(value) if isinstance(v, dict) and "Fn::GetAtt" in v]
    return [
        (target, attribute.removeprefix("Outputs."))
        for target, attribute in getatts
        if attribute.startswith("Outputs.")
    ]


def test_outputs_match_the_scripts_contract(templates: dict[str, dict[str, Any]]) -> None:
    main, bootstrap = templates["main.yaml"], templates["bootstrap.yaml"]
    assert set(main["Outputs"]) == MAIN_OUTPUTS | OPTIONAL_MAIN_OUTPUTS
    conditional = {k for k, v in main["Outputs"].items() if "Condition" in v}
    assert conditional == OPTIONAL_MAIN_OUTPUTS
    assert main["Parameters"]["CacheMode"]["Default"] == "replication-group"
    assert set(bootstrap["Outputs"]) == BOOTSTRAP_OUTPUTS
    assert main["Outputs"]["CacheTls"]["Value"] == "true"
    stacks = _resources(main, "AWS::CloudFormation::Stack")
    for source, output in _getatt_outputs(main["Outputs"]):
        assert output in templates[_template_of(stacks[source])]["Outputs"], (source, output)
    required = {k for k, v in main["Parameters"].items() if "Default" not in v}
    assert required == PARAMETERS_SET_BY_DEPLOY
    assert all("Default" in p for p in bootstrap.get("Parameters", {}).values())


def test_original_parameter_names_and_defaults_are_kept(
    templates: dict[str, dict[str, Any]],
) -> None:
    params = templates["main.yaml"]["Parameters"]
    actual = {name: str(params.get(name, {}).get("Default")) for name in ORIGINAL_DEFAULTS}
    assert actual == ORIGINAL_DEFAULTS


# --- network -----------------------------------------------------------------------------------


def _subnets_by_tier(network: dict[str, Any]) -> dict[str, list[str]]:
    subnets = sorted(_resources(network, "AWS::EC2::Subnet"))
    tiers = {
        "public": [s for s in subnets if s.startswith("PublicSubnet")],
        "app": [s for s in subnets if re.fullmatch(r"PrivateSubnet\d", s)],
        "db": [s for s in subnets if s.startswith("PrivateDBSubnet")],
    }
    assert sum(map(len, tiers.values())) == len(subnets), f"unexpected subnets: {subnets}"
    return tiers


def test_three_subnets_per_tier_in_the_three_zones_deploy_sh_chose(
    templates: dict[str, dict[str, Any]],
) -> None:
    """Zones come from the AvailabilityZones parameter (chosen by zone ID), never by position from
    GetAZs, whose first names may include a zone EKS refuses."""
    network = templates["network.yaml"]
    assert "Fn::GetAZs" not in json.dumps(network)
    for tier, names in _subnets_by_tier(network).items():
        azs = [network["Resources"][n]["Properties"]["AvailabilityZone"] for n in names]
        indexes = sorted(az["Fn::Select"][0] for az in azs)
        assert len(names) == 3 and indexes == [0, 1, 2], f"{tier}: {names} {azs}"
        assert all(az["Fn::Select"][1] == {"Ref": "AvailabilityZones"} for az in azs), tier
    assert network["Parameters"]["AvailabilityZones"]["Type"] == (
        "List<AWS::EC2::AvailabilityZone::Name>"
    )
    stack = templates["main.yaml"]["Resources"]["NetworkStack"]["Properties"]["Parameters"]
    assert stack["AvailabilityZones"] == {"Fn::Join": [",", {"Ref": "AvailabilityZones"}]}


def test_db_subnets_use_only_isolated_db_route_tables(
    templates: dict[str, dict[str, Any]],
) -> None:
    """The original associated the DB subnets with app route tables; pin the fix."""
    network = templates["network.yaml"]
    tiers = _subnets_by_tier(network)
    table_of: dict[str, str] = {}
    for assoc in _resources(network, "AWS::EC2::SubnetRouteTableAssociation").values():
        subnet = assoc["Properties"]["SubnetId"]["Ref"]
        assert subnet not in table_of, f"{subnet} associated twice"
        table_of[subnet] = assoc["Properties"]["RouteTableId"]["Ref"]
    assert set(table_of) == {s for names in tiers.values() for s in names}
    db_tables = {table_of[s] for s in tiers["db"]}
    other_tables = {table_of[s] for s in tiers["public"] + tiers["app"]}
    assert db_tables.isdisjoint(other_tables), (db_tables, other_tables)
    assert all("DB" in t for t in db_tables), db_tables
    routes = _resources(network, "AWS::EC2::Route").values()
    db_routes = [r for r in routes if r["Properties"]["RouteTableId"]["Ref"] in db_tables]
    assert not db_routes, f"DB subnets must not route out of the VPC: {db_routes}"
    app_routes = [
        r["Properties"]
        for r in routes
        if r["Properties"]["RouteTableId"]["Ref"] in {table_of[s] for s in tiers["app"]}
    ]
    assert all("NatGatewayId" in r for r in app_routes) and app_routes


def test_subnets_carry_the_load_balancer_role_tags(templates: dict[str, dict[str, Any]]) -> None:
    network = templates["network.yaml"]
    expected = {"public": "kubernetes.io/role/elb", "app": "kubernetes.io/role/internal-elb"}
    for tier, names in _subnets_by_tier(network).items():
        for name in names:
            props = network["Resources"][name]["Properties"]
            tags = {t["Key"]: t["Value"] for t in props.get("Tags", [])}
            roles = {k: v for k, v in tags.items() if k.startswith("kubernetes.io/role/")}
            assert roles == ({expected[tier]: "1"} if tier in expected else {}), (name, roles)
            assert props.get("MapPublicIpOnLaunch") is False, name


# --- cache -------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", CACHE_MODES)
def test_each_cache_mode_creates_exactly_its_resources_and_outputs(
    mode: str, templates: dict[str, dict[str, Any]]
) -> None:
    cache, main = templates["cache.yaml"], templates["main.yaml"]
    params = _mode_params(mode)
    assert set(cache["Parameters"]["CacheMode"]["AllowedValues"]) == set(CACHE_MODES)
    assert (
        main["Parameters"]["CacheMode"]["AllowedValues"]
        == cache["Parameters"]["CacheMode"]["AllowedValues"]
    )
    assert _present(cache["Resources"], cache, params) == MODE_RESOURCES[mode]
    expected = MAIN_OUTPUTS | MODE_MAIN_OUTPUTS[mode]
    assert _present(main["Outputs"], main, {**params, "CertificateArn": ""}) == expected
    # Every cache output main.yaml reads in this mode exists in this mode.
    present = _present(cache["Outputs"], cache, params)
    for name in expected:
        for stack, output in _getatt_outputs(main["Outputs"][name]):
            assert stack != "CacheStack" or output in present, (mode, name, output)
    # And no output of this mode names a resource the mode does not create.
    for name in present:
        value = _evaluate(cache["Outputs"][name]["Value"], cache, params)
        refs = {v["Ref"] for v in _walk(value) if isinstance(v, dict) and "Ref" in v}
        attrs = {
            v["Fn::GetAtt"][0] for v in _walk(value) if isinstance(v, dict) and "Fn::GetAtt" in v
        }
        assert (refs | attrs) & set(cache["Resources"]) <= MODE_RESOURCES[mode], (mode, name)


def _walk(value: Any) -> list[Any]:
    """value and everything nested in it."""
    found = [value]
    if isinstance(value, dict):
        for item in value.values():
            found.extend(_walk(item))
    elif isinstance(value, list):
        for item in value:
            found.extend(_walk(item))
    return found


@pytest.mark.parametrize(
    ("mode", "host", "cluster", "secret", "key"),
    [
        (
            "replication-group",
            ["ReplicationGroup", "PrimaryEndPoint.Address"],
            "false",
            "AuthTokenSecret",
            "token",
        ),
        (
            "cluster",
            ["ClusterReplicationGroup", "ConfigurationEndPoint.Address"],
            "true",
            "AuthTokenSecret",
            "token",
        ),
        (
            "serverless",
            ["ServerlessCache", "Endpoint.Address"],
            "true",
            "UserPasswordSecret",
            "password",
        ),
    ],
)
def test_cache_outputs_give_the_app_what_each_mode_needs(
    mode: str, host: list[str], cluster: str, secret: str, key: str,
    templates: dict[str, dict[str, Any]],
) -> None:  # fmt: skip
    cache = templates["cache.yaml"]
    params = _mode_params(mode)
    outputs = {
        name: _evaluate(cache["Outputs"][name]["Value"], cache, params)
        for name in _present(cache["Outputs"], cache, params)
    }
    assert outputs["Host"] == {"Fn::GetAtt": host}
    assert outputs["Port"] == {"Fn::GetAtt": [host[0], host[1].replace("Address", "Port")]}
    assert (outputs["Cluster"], outputs["SecretArn"], outputs["SecretKey"]) == (
        cluster,
        {"Ref": secret},
        key,
    )
    generate = cache["Resources"][secret]["Properties"]["GenerateSecretString"]
    assert generate["GenerateStringKey"] == key
    assert outputs.get("Username") == ("message-app" if mode == "serverless" else None)
    if mode == "serverless":
        template = json.loads(generate["SecretStringTemplate"])
        assert template == {"username": outputs["Username"]}


def test_cluster_mode_is_sharded_with_failover_and_the_cluster_parameter_group(
    templates: dict[str, dict[str, Any]],
) -> None:
    cache = templates["cache.yaml"]
    group = cache["Resources"]["ClusterReplicationGroup"]["Properties"]
    assert group["ClusterMode"] == "enabled"
    assert "NumCacheClusters" not in group
    assert group["NumNodeGroups"] == {"Ref": "NumNodeGroups"}
    assert group["ReplicasPerNodeGroup"] == {"Ref": "ReplicasPerNodeGroup"}
    assert group["AutomaticFailoverEnabled"] is True
    for replicas in ("0", "1", "2"):
        params = {**_mode_params("cluster"), "ReplicasPerNodeGroup": replicas}
        assert _evaluate(group["MultiAZEnabled"], cache, params) is (replicas != "0")
    settings = cache["Resources"]["ClusterParameterGroup"]["Properties"]["Properties"]
    assert settings["cluster-enabled"] == "yes"
    assert group["CacheParameterGroupName"] == {"Ref": "ClusterParameterGroup"}
    for name in ("TransitEncryptionEnabled", "AtRestEncryptionEnabled"):
        assert group[name] is True, name
    assert group["KmsKeyId"] == {"Fn::GetAtt": ["CacheKey", "Arn"]}
    # The alarms cover at most 3 shards of 3 nodes.
    main = templates["main.yaml"]["Parameters"]
    assert max(map(int, main["NumNodeGroups"]["AllowedValues"])) <= 3
    assert max(map(int, main["ReplicasPerNodeGroup"]["AllowedValues"])) <= 2


def test_serverless_uses_a_user_group_with_a_disabled_default_user(
    templates: dict[str, dict[str, Any]],
) -> None:
    cache = templates["cache.yaml"]
    res = cache["Resources"]
    serverless = res["ServerlessCache"]["Properties"]
    assert serverless["Engine"] == {"Ref": "CacheEngine"}
    assert serverless["KmsKeyId"] == {"Fn::GetAtt": ["CacheKey", "Arn"]}
    assert serverless["SecurityGroupIds"] == [{"Ref": "ElasticacheSecurityGroup"}]
    assert serverless["SubnetIds"] == {"Ref": "PrivateDBSubnets"}
    assert serverless["UserGroupId"] == {"Ref": "UserGroup"}
    group = res["UserGroup"]["Properties"]
    members = {res[u["Ref"]]["Properties"]["UserName"]: res[u["Ref"]] for u in group["UserIds"]}
    assert set(members) == {"default", "message-app"}
    default = members["default"]["Properties"]
    assert default["AccessString"].split()[0] == "off" and "-@all" in default["AccessString"]
    app = members["message-app"]["Properties"]
    assert app["AccessString"].split()[0] == "on"
    assert app["AuthenticationMode"]["Type"] == "password"
    (password,) = app["AuthenticationMode"]["Passwords"]
    assert password == {
        "Fn::Sub": "{{resolve:secretsmanager:${UserPasswordSecret}:SecretString:password}}"
    }
    # A redis-engine group may hold the password-less disabled default user on a Valkey cache.
    engines = {group["Engine"], *(m["Properties"]["Engine"] for m in members.values())}
    assert engines == {"redis"}
    # Ids unique per stack and lower case, whatever the stack's name.
    ids = [group["UserGroupId"], serverless["ServerlessCacheName"]]
    ids += [m["Properties"]["UserId"] for m in members.values()]
    assert all("AWS::StackId" in json.dumps(i) for i in ids), ids


@pytest.mark.parametrize(
    ("storage", "ecpu", "limits"),
    [
        ("0", "0", None),
        ("10", "0", {"DataStorage": {"Maximum": "10", "Unit": "GB"}}),
        ("0", "5000", {"ECPUPerSecond": {"Maximum": "5000"}}),
        (
            "5",
            "5000",
            {"DataStorage": {"Maximum": "5", "Unit": "GB"}, "ECPUPerSecond": {"Maximum": "5000"}},
        ),
    ],
)
def test_serverless_usage_limits_are_optional_and_zero_means_none(
    storage: str, ecpu: str, limits: dict | None, templates: dict[str, dict[str, Any]]
) -> None:
    cache = templates["cache.yaml"]
    params = {
        **_mode_params("serverless"),
        "ServerlessMaxDataStorageGB": storage,
        "ServerlessMaxECPUPerSecond": ecpu,
    }
    value = cache["Resources"]["ServerlessCache"]["Properties"]["CacheUsageLimits"]
    resolved = _evaluate(value, cache, params)
    no_value = {"Ref": "AWS::NoValue"}
    if limits is None:
        assert resolved == no_value
    else:
        assert {k: v for k, v in resolved.items() if v != no_value} == limits


def test_serverless_ecpu_limit_is_none_or_in_elasticaches_range(
    templates: dict[str, dict[str, Any]],
) -> None:
    """ElastiCache takes an ECPUPerSecond Maximum of 1,000 to 15,000,000 only: main.yaml refuses
    anything else but 0 (no limit) before creating anything, with a message that says why.
    CloudFormation matches AllowedPattern against the whole value, as re.fullmatch does."""
    parameter = templates["main.yaml"]["Parameters"]["ServerlessMaxECPUPerSecond"]
    assert parameter["Default"] == "0"
    pattern = re.compile(parameter["AllowedPattern"])
    accepted = ["0", "1000", "5000", "100000", "999999", "1000000", "14999999", "15000000"]
    refused = ["1", "500", "999", "15000001", "16000000", "99999999", "01000", "-1", "1e4", ""]
    assert [v for v in accepted if not pattern.fullmatch(v)] == []
    assert [v for v in refused if pattern.fullmatch(v)] == []
    assert "1000" in parameter["ConstraintDescription"]
    assert "15000000" in parameter["ConstraintDescription"]


@pytest.mark.parametrize("name", ["ReplicationGroup", "ClusterReplicationGroup"])
def test_cache_is_an_encrypted_authenticated_replication_group(
    name: str, templates: dict[str, dict[str, Any]]
) -> None:
    cache = templates["cache.yaml"]
    assert not _resources(cache, "AWS::ElastiCache::CacheCluster")
    group = cache["Resources"][name]["Properties"]
    assert group["TransitEncryptionEnabled"] is True
    assert group["AtRestEncryptionEnabled"] is True
    assert group["Engine"] == {"Ref": "CacheEngine"}
    token = group["AuthToken"]["Fn::Sub"]
    match = re.fullmatch(r"\{\{resolve:secretsmanager:\$\{(\w+)\}:SecretString:(\w+)\}\}", token)
    assert match, f"AuthToken is not a Secrets Manager dynamic reference: {token!r}"
    secret = cache["Resources"][match.group(1)]
    assert secret["Type"] == "AWS::SecretsManager::Secret"
    generate = secret["Properties"]["GenerateSecretString"]
    assert generate["GenerateStringKey"] == match.group(2)
    assert int(generate.get("PasswordLength", 32)) >= 32
    # ElastiCache refuses AUTH tokens containing @, " or /.
    excluded = generate.get("ExcludeCharacters", "")
    assert generate.get("ExcludePunctuation") is True or set('@"/') <= set(excluded)
    key_id, attribute = group["KmsKeyId"]["Fn::GetAtt"]
    key = cache["Resources"][key_id]
    assert attribute == "Arn"
    assert key["Type"] == "AWS::KMS::Key" and key["Properties"]["EnableKeyRotation"] is True


@pytest.mark.parametrize("replicas", [0, 1, 2, 5])
def test_failover_follows_the_replica_count(
    replicas: int, templates: dict[str, dict[str, Any]]
) -> None:
    cache = templates["cache.yaml"]
    allowed = [int(v) for v in cache["Parameters"]["CacheReplicaCount"]["AllowedValues"]]
    assert replicas in allowed
    group = cache["Resources"]["ReplicationGroup"]["Properties"]
    params = {"CacheReplicaCount": str(replicas), "CacheEngine": "redis"}
    resolved = {
        k: _evaluate(group[k], cache, params)
        for k in ("MultiAZEnabled", "AutomaticFailoverEnabled", "NumCacheClusters")
    }
    assert resolved == {
        "MultiAZEnabled": replicas >= 1,
        "AutomaticFailoverEnabled": replicas >= 1,
        "NumCacheClusters": str(replicas + 1),
    }


@pytest.mark.parametrize("engine", sorted(CACHE_ENGINES))
def test_engine_version_and_parameter_family_follow_the_engine(
    engine: str, templates: dict[str, dict[str, Any]]
) -> None:
    cache = templates["cache.yaml"]
    assert set(cache["Parameters"]["CacheEngine"]["AllowedValues"]) == set(CACHE_ENGINES)
    assert set(templates["main.yaml"]["Parameters"]["CacheEngine"]["AllowedValues"]) == set(
        CACHE_ENGINES
    )
    params = {"CacheEngine": engine, "CacheReplicaCount": "1"}
    for group_name, family_name in (
        ("ReplicationGroup", "CacheParameterGroup"),
        ("ClusterReplicationGroup", "ClusterParameterGroup"),
    ):
        group = cache["Resources"][group_name]["Properties"]
        family = cache["Resources"][family_name]["Properties"]["CacheParameterGroupFamily"]
        assert (
            _evaluate(group["EngineVersion"], cache, params),
            _evaluate(family, cache, params),
        ) == CACHE_ENGINES[engine]
    serverless = cache["Resources"]["ServerlessCache"]["Properties"]
    major = _evaluate(serverless["MajorEngineVersion"], cache, params)
    assert CACHE_ENGINES[engine][0].split(".")[0] == major


def test_parameter_group_holds_what_the_session_store_relies_on(
    templates: dict[str, dict[str, Any]],
) -> None:
    """Every key the app writes has a TTL: volatile-lru evicts the least recently used sessions
    when memory runs out (noeviction would fail every save). close-on-replica-write drops the
    connection of a write to a demoted primary, so the client reconnects to the new one."""
    res = templates["cache.yaml"]["Resources"]
    settings = res["CacheParameterGroup"]["Properties"]["Properties"]
    assert "timeout" not in settings
    assert settings == {
        "tcp-keepalive": "60",
        "maxmemory-policy": "volatile-lru",
        "close-on-replica-write": "yes",
    }
    cluster = res["ClusterParameterGroup"]["Properties"]["Properties"]
    assert cluster == {**settings, "cluster-enabled": "yes"}
    group = res["ReplicationGroup"]["Properties"]
    assert group["CacheParameterGroupName"] == {"Ref": "CacheParameterGroup"}


def test_valkey_is_the_default_engine(templates: dict[str, dict[str, Any]]) -> None:
    assert templates["main.yaml"]["Parameters"]["CacheEngine"]["Default"] == "valkey"


def test_cache_port_is_open_only_to_the_eks_cluster_security_group(
    templates: dict[str, dict[str, Any]],
) -> None:
    sgs = templates["securitygroups.yaml"]
    assert not _resources(sgs, "AWS::EC2::SecurityGroupIngress")
    group = _one(sgs, "AWS::EC2::SecurityGroup")
    rules = group["SecurityGroupIngress"] + group.get("SecurityGroupEgress", [])
    assert all(len(str(r.get("Description", "")).split()) >= 3 for r in rules), rules
    ingress = [
        (r["IpProtocol"], int(r["FromPort"]), int(r["ToPort"]), r.get("SourceSecurityGroupId"))
        for r in group["SecurityGroupIngress"]
    ]
    assert ingress == [("tcp", 6379, 6379, {"Ref": "EKSClusterSecurityGroup"})]
    assert not any("CidrIp" in r or "CidrIpv6" in r for r in group["SecurityGroupIngress"])
    assert [r["CidrIp"] for r in group["SecurityGroupEgress"]] == [{"Ref": "VPCcidr"}]
    # Follow the parameter back to the security group EKS creates for the cluster.
    main_stacks = _resources(templates["main.yaml"], "AWS::CloudFormation::Stack")
    passed = main_stacks["SecurityGroupStack"]["Properties"]["Parameters"]
    source, output = _getatt_outputs(passed["EKSClusterSecurityGroup"])[0]
    assert _template_of(main_stacks[source]) == "eks.yaml"
    cluster_output = templates["eks.yaml"]["Outputs"][output]["Value"]
    assert cluster_output == {"Fn::GetAtt": ["Cluster", "ClusterSecurityGroupId"]}
    cache_sg = main_stacks["CacheStack"]["Properties"]["Parameters"]["ElasticacheSecurityGroup"]
    assert _getatt_outputs(cache_sg) == [("SecurityGroupStack", "ElasticacheSecurityGroup")]
    res = templates["cache.yaml"]["Resources"]
    for name in ("ReplicationGroup", "ClusterReplicationGroup", "ServerlessCache"):
        assert res[name]["Properties"]["SecurityGroupIds"] == [{"Ref": "ElasticacheSecurityGroup"}]


# --- EKS ---------------------------------------------------------------------------------------


def test_kubernetes_versions_are_in_standard_support(
    templates: dict[str, dict[str, Any]],
) -> None:
    main = templates["main.yaml"]["Parameters"]["KubernetesVersion"]
    child = templates["eks.yaml"]["Parameters"]["KubernetesVersion"]
    assert main["AllowedValues"] == child["AllowedValues"]
    assert main["Default"] in main["AllowedValues"]
    short = [
        v
        for v in main["AllowedValues"]
        if (EKS_STANDARD_SUPPORT_END.get(v, date.min) - TEMPLATES_WRITTEN).days
        < MIN_SUPPORT_LEFT_DAYS
    ]
    assert not short, f"under {MIN_SUPPORT_LEFT_DAYS} days of standard support left: {short}"
    cluster = _one(templates["eks.yaml"], "AWS::EKS::Cluster")
    assert cluster["Version"] == {"Ref": "KubernetesVersion"}


def test_cluster_access_is_through_an_admin_access_entry(
    templates: dict[str, dict[str, Any]],
) -> None:
    eks = templates["eks.yaml"]
    cluster = _one(eks, "AWS::EKS::Cluster")
    assert cluster["AccessConfig"]["AuthenticationMode"] == "API"
    entry = _one(eks, "AWS::EKS::AccessEntry")
    assert entry["PrincipalArn"] == {"Ref": "ClusterAdminPrincipalArn"}
    assert entry["ClusterName"] == {"Ref": "Cluster"}
    policies = [
        (p["PolicyArn"]["Fn::Sub"].rsplit("/", 1)[1], p["AccessScope"]["Type"])
        for p in entry["AccessPolicies"]
    ]
    assert policies == [("AmazonEKSClusterAdminPolicy", "cluster")]


def test_secrets_are_envelope_encrypted_and_control_plane_logged(
    templates: dict[str, dict[str, Any]],
) -> None:
    eks = templates["eks.yaml"]
    cluster = _one(eks, "AWS::EKS::Cluster")
    [encryption] = cluster["EncryptionConfig"]
    assert encryption["Resources"] == ["secrets"]
    key_id, attribute = encryption["Provider"]["KeyArn"]["Fn::GetAtt"]
    key = eks["Resources"][key_id]
    assert (attribute, key["Type"]) == ("Arn", "AWS::KMS::Key")
    assert key["Properties"]["EnableKeyRotation"] is True
    logged = {t["Type"] for t in cluster["Logging"]["ClusterLogging"]["EnabledTypes"]}
    assert logged == EKS_LOG_TYPES
    vpc = cluster["ResourcesVpcConfig"]
    assert vpc["EndpointPrivateAccess"] is True
    assert vpc["SubnetIds"] == {"Ref": "PrivateSubnets"}


def test_auto_mode_has_all_three_capabilities_and_their_roles(
    templates: dict[str, dict[str, Any]],
) -> None:
    """EKS accepts Auto Mode only with compute, load balancing and block storage together."""
    eks = templates["eks.yaml"]
    assert not _resources(eks, "AWS::EKS::Nodegroup")
    cluster = _one(eks, "AWS::EKS::Cluster")
    compute = cluster["ComputeConfig"]
    assert compute["Enabled"] is True
    assert compute["NodePools"] == ["system", "general-purpose"]
    assert compute["NodeRoleArn"] == {"Fn::GetAtt": ["NodeRole", "Arn"]}
    assert cluster["KubernetesNetworkConfig"]["ElasticLoadBalancing"]["Enabled"] is True
    assert cluster["StorageConfig"]["BlockStorage"]["Enabled"] is True
    assert cluster["BootstrapSelfManagedAddons"] is False
    role = eks["Resources"]["ClusterRole"]["Properties"]
    policies = {p["Fn::Sub"].rsplit("/", 1)[1] for p in role["ManagedPolicyArns"]}
    assert policies == {
        "AmazonEKSClusterPolicy",
        "AmazonEKSComputePolicy",
        "AmazonEKSBlockStoragePolicy",
        "AmazonEKSLoadBalancingPolicy",
        "AmazonEKSNetworkingPolicy",
    }
    (trust,) = role["AssumeRolePolicyDocument"]["Statement"]
    assert sorted(trust["Action"]) == ["sts:AssumeRole", "sts:TagSession"]


def test_metrics_server_is_a_managed_add_on_at_eks_default_version(
    templates: dict[str, dict[str, Any]],
) -> None:
    """The HPA needs the metrics API; no add-on version is pinned by hand."""
    addons = [
        a["Properties"] for a in _resources(templates["eks.yaml"], "AWS::EKS::Addon").values()
    ]
    assert [a["AddonName"] for a in addons] == ["metrics-server"]
    assert all("AddonVersion" not in a for a in addons)


# --- docs/deploy-aws.md ---------------------------------------------------------------------------

_TABLE_START, _TABLE_END = "<!-- cfn-params:start -->", "<!-- cfn-params:end -->"


def parse_parameter_table(markdown: str) -> dict[str, tuple[str | None, list[str]]]:
    """Rows of the documented parameter table: name -> (default or None, allowed values)."""
    body = markdown.split(_TABLE_START, 1)[1].split(_TABLE_END, 1)[0]
    rows: dict[str, tuple[str | None, list[str]]] = {}
    for line in body.strip().splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        name, default, allowed = (re.findall(r"`([^`]*)`", c) for c in cells[:3])
        assert len(name) == 1 and name[0] not in rows, f"bad row: {line}"
        rows[name[0]] = (default[0] if default else None, allowed)
    return rows


def test_documented_parameter_table_matches_the_templates(
    templates: dict[str, dict[str, Any]],
) -> None:
    text = PARAMETER_DOC.read_text()
    assert _TABLE_START in text and _TABLE_END in text, f"{PARAMETER_DOC} lost its table markers"
    expected = {
        name: (
            str(p["Default"]) if "Default" in p else None,
            [str(v) for v in p.get("AllowedValues", [])],
        )
        for template in ("bootstrap.yaml", "main.yaml")
        for name, p in templates[template].get("Parameters", {}).items()
    }
    assert parse_parameter_table(text) == expected
