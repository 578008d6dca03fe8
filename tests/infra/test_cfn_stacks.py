"""The wiring between the stacks in cfn/: nested stacks and their parameters, the outputs the
scripts read, the parameters kept from the original sample, and the documented parameter table."""

from __future__ import annotations

import re
from typing import Any

from tests.support import REPO_ROOT

from .cfn import (
    CFN,
    MAIN_OUTPUTS,
    NESTED,
    OPTIONAL_MAIN_OUTPUTS,
    TEMPLATE_NAMES,
    getatt_outputs,
    resources,
    template_of,
)

PARAMETER_DOC = REPO_ROOT / "docs" / "deploy-aws.md"
BOOTSTRAP_OUTPUTS = {"TemplateBucketName", "EcrRepositoryUri", "EcrRepositoryName"}
PARAMETERS_SET_BY_DEPLOY = {
    "TemplateBucket",
    "EcrRepositoryUri",
    "ClusterAdminPrincipalArn",
    "AvailabilityZones",
}
# Outputs only some deployments have (a Condition): init.sh reads them when present.

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

# Regional virtual-hosted S3 URL of a nested template in the bootstrap bucket.
TEMPLATE_URL = re.compile(
    re.escape("https://${TemplateBucket}.s3.${AWS::Region}.${AWS::URLSuffix}/") + r"([\w.]+)"
)


def test_every_template_has_a_description(templates: dict[str, dict[str, Any]]) -> None:
    assert sorted(p.name for p in CFN.glob("*.yaml")) == sorted(TEMPLATE_NAMES)
    short = [n for n, t in templates.items() if len(str(t.get("Description", "")).split()) < 5]
    assert not short, f"templates without a real Description: {short}"


def test_nested_stacks_pass_exactly_the_child_parameters(
    templates: dict[str, dict[str, Any]],
) -> None:
    """cfn-lint cannot follow TemplateURL, so a renamed child parameter would first fail in AWS."""
    stacks = resources(templates["main.yaml"], "AWS::CloudFormation::Stack")
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
        for ref in getatt_outputs(stack["Properties"].get("Parameters", {})):
            source, output = ref
            source_file = template_of(stacks[source])
            assert output in templates[source_file]["Outputs"], f"{source_file} lacks {output}"
    assert sorted(seen) == sorted(NESTED)


def test_outputs_match_the_scripts_contract(templates: dict[str, dict[str, Any]]) -> None:
    main, bootstrap = templates["main.yaml"], templates["bootstrap.yaml"]
    assert set(main["Outputs"]) == MAIN_OUTPUTS | OPTIONAL_MAIN_OUTPUTS
    conditional = {k for k, v in main["Outputs"].items() if "Condition" in v}
    assert conditional == OPTIONAL_MAIN_OUTPUTS
    assert main["Parameters"]["CacheMode"]["Default"] == "replication-group"
    assert set(bootstrap["Outputs"]) == BOOTSTRAP_OUTPUTS
    assert main["Outputs"]["CacheTls"]["Value"] == "true"
    stacks = resources(main, "AWS::CloudFormation::Stack")
    for source, output in getatt_outputs(main["Outputs"]):
        assert output in templates[template_of(stacks[source])]["Outputs"], (source, output)
    required = {k for k, v in main["Parameters"].items() if "Default" not in v}
    assert required == PARAMETERS_SET_BY_DEPLOY
    assert all("Default" in p for p in bootstrap.get("Parameters", {}).values())


def test_original_parameter_names_and_defaults_are_kept(
    templates: dict[str, dict[str, Any]],
) -> None:
    params = templates["main.yaml"]["Parameters"]
    actual = {name: str(params.get(name, {}).get("Default")) for name in ORIGINAL_DEFAULTS}
    assert actual == ORIGINAL_DEFAULTS


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
