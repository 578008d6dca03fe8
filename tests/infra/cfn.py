"""The CloudFormation templates in cfn/ as the tests read them: parsed with cfn-lint's decoder,
searched, and evaluated for given parameter values; and the linters' runners.

``evaluate`` resolves the few intrinsic functions the templates use on parameter-dependent
settings (Ref of a parameter, Fn::Equals/Not/And/Or, a named Condition, Fn::If, Fn::Select), so
that a test checks what CloudFormation would send for each allowed value instead of pinning how
a template spells it. Written here rather than taken from a library: cfn-lint resolves every
value a setting *may* take across all parameter values (a linter's question, through its
internal validator classes), and cloud-radar, which renders a stack for given values, resolves
every dynamic reference and parameter type too, which these offline checks cannot feed.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from tests.support import REPO_ROOT, checkov_report, venv_tool

CFN = REPO_ROOT / "cfn"
CFN_LINT_MISSING = "cfn-lint (pip package cfn-lint) is not installed"
# The stacks main.yaml nests.
NESTED = (
    "network.yaml",
    "securitygroups.yaml",
    "eks.yaml",
    "cache.yaml",
    "app.yaml",
    "observability.yaml",
    "dashboard.yaml",
    "edge.yaml",
)
# Every template in cfn/: the bootstrap stack, the main stack and those it nests.
TEMPLATE_NAMES = ("bootstrap.yaml", "main.yaml", *NESTED)
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
    "CacheAuth",
    "CacheName",
    "SecretKeyArn",
    "AppNamespace",
    "Region",
    "EcrRepositoryUri",
    "DashboardName",
    "LoadBalancerType",
    "PublicSubnetCidrs",
    "PrivateSubnetCidrs",
}
# Outputs only some deployments have (a Condition): init.sh reads them when present.
OPTIONAL_MAIN_OUTPUTS = {
    "CertificateArn",
    "CacheUsername",
    "AuthTokenSecretArn",
    "CacheSecretArn",
    "CacheSecretKey",
    "WebAclArn",
    "AccessLogBucket",
}

# The cache modes (CacheMode) and what each one creates in cfn/cache.yaml, nothing more.
CACHE_MODES = ("replication-group", "cluster", "serverless")
# Parameters for a rendered copy per mode: every conditional resource of the mode switched on
# (usage limits too), since cfn-lint and checkov skip what a false condition leaves out.
MODE_DEFAULTS = {
    # The password way (main.yaml's CacheAuth, the nested templates' AuthMode): what the mode tests
    # pin; tests/infra/test_cfn_auth.py renders each mode with iam and with token.
    "CacheAuth": "token",
    "AuthMode": "token",
    "CacheEngine": "valkey",
    "CacheReplicaCount": "1",
    "NumNodeGroups": "3",
    "ReplicasPerNodeGroup": "1",
    "ServerlessMaxDataStorageGB": "10",
    "ServerlessMaxECPUPerSecond": "100000",
}


def load(name: str) -> dict[str, Any]:
    return load_path(CFN / name)


def load_path(path: Path) -> dict[str, Any]:
    """Parse a template with cfn-lint's decoder, which understands the short intrinsic tags."""
    decoder = pytest.importorskip("cfnlint.decode", reason=CFN_LINT_MISSING)
    template, matches = decoder.decode(str(path))
    assert not matches, f"{path.name} does not parse: {matches}"
    assert template is not None
    return template


def resources(template: dict[str, Any], rtype: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == rtype}


def one(template: dict[str, Any], rtype: str) -> dict[str, Any]:
    found = resources(template, rtype)
    assert len(found) == 1, f"expected one {rtype}, found {sorted(found)}"
    return next(iter(found.values()))["Properties"]


def evaluate(value: Any, template: dict[str, Any], params: dict[str, str]) -> Any:
    """Resolve the few intrinsic functions used on parameter-dependent cache settings.

    Lets the tests check what CloudFormation would send for each allowed parameter value
    instead of pinning how the template spells it.
    """
    if isinstance(value, dict) and len(value) == 1:
        ((fn, arg),) = value.items()
        if fn == "Ref" and arg in params:
            return params[arg]
        if fn == "Fn::Equals":
            left, right = (evaluate(a, template, params) for a in arg)
            return str(left) == str(right)
        if fn == "Fn::Not":
            return not evaluate(arg[0], template, params)
        if fn == "Fn::Or":
            return any(evaluate(a, template, params) for a in arg)
        if fn == "Fn::And":
            return all(evaluate(a, template, params) for a in arg)
        if fn == "Condition":
            return evaluate(template["Conditions"][arg], template, params)
        if fn == "Fn::If":
            cond, when_true, when_false = arg
            chosen = when_true if evaluate({"Condition": cond}, template, params) else when_false
            return evaluate(chosen, template, params)
        if fn == "Fn::Select":
            index, items = (evaluate(a, template, params) for a in arg)
            return evaluate(items[int(index)], template, params)
    if isinstance(value, list):
        return [evaluate(v, template, params) for v in value]
    if isinstance(value, dict) and not any(k == "Ref" or k.startswith("Fn::") for k in value):
        return {k: evaluate(v, template, params) for k, v in value.items()}
    return value


def present(section: dict[str, Any], template: dict[str, Any], params: dict[str, str]) -> set:
    """Names in a Resources or Outputs section whose Condition holds for these parameters."""
    return {
        name
        for name, item in section.items()
        if "Condition" not in item or evaluate({"Condition": item["Condition"]}, template, params)
    }


def mode_params(mode: str) -> dict[str, str]:
    return {"CacheMode": mode, **MODE_DEFAULTS}


def walk(value: Any) -> list[Any]:
    """value and everything nested in it."""
    found = [value]
    if isinstance(value, dict):
        for item in value.values():
            found.extend(walk(item))
    elif isinstance(value, list):
        for item in value:
            found.extend(walk(item))
    return found


def template_of(stack: dict[str, Any]) -> str:
    return stack["Properties"]["TemplateURL"]["Fn::Sub"].rsplit("/", 1)[1]


def getatt_outputs(value: Any) -> list[tuple[str, str]]:
    """(nested stack, output name) of every GetAtt Stack.Outputs.X inside value."""
    getatts = [v["Fn::GetAtt"] for v in walk(value) if isinstance(v, dict) and "Fn::GetAtt" in v]
    return [
        (target, attribute.removeprefix("Outputs."))
        for target, attribute in getatts
        if attribute.startswith("Outputs.")
    ]


def cfn_lint(files: list[Path]) -> tuple[int, list[dict]]:
    """Run cfn-lint once over ``files``: its exit status and its findings."""
    exe = venv_tool("cfn-lint")
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


def lint_problems(findings: list[dict]) -> list[str]:
    """The errors and warnings among cfn-lint findings, one line each."""
    return [
        f"{m['Rule']['Id']} {'/'.join(map(str, m['Location']['Path']))}: {m['Message']}"
        for m in findings
        if m["Level"] in ("Error", "Warning")
    ]


def checkov_grouped(
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


def failed_checks(result: dict[str, list]) -> list[str]:
    return [f"{c['check_id']} {c['resource']}: {c['check_name']}" for c in result["failed"]]


def with_defaults(text: str, defaults: dict[str, str]) -> str:
    """A template's text with the Default of each parameter named in ``defaults`` set to its
    value (added where it had none): a copy the linters check in that configuration, since
    they skip what a false condition leaves out."""
    for parameter, value in defaults.items():
        block = re.search(rf"\n  {parameter}:\n(?:    .*\n)+", text)
        if block is None:
            continue
        body = re.sub(r"    Default: .*\n", "", block.group(0))
        body = body.replace(f"  {parameter}:\n", f"  {parameter}:\n    Default: {value}\n", 1)
        text = text.replace(block.group(0), body, 1)
    return text


def rendered_copies(
    root: Path, names: Iterable[str], params: dict[str, dict[str, str]]
) -> dict[str, Path]:
    """A folder below ``root`` per configuration in ``params`` (its name the configuration's),
    holding the templates ``names`` with that configuration's parameter defaults (with_defaults)."""
    folders = {}
    for configuration, defaults in params.items():
        folder = root / configuration
        folder.mkdir()
        for name in names:
            (folder / name).write_text(with_defaults((CFN / name).read_text(), defaults))
        folders[configuration] = folder
    return folders
