"""cfn-lint and checkov over every template in cfn/, and over copies rendered for each cache mode.

A canary template with known mistakes goes through each tool in the same run, so a tool that
silently checks nothing cannot make the suite pass.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from .cfn import (
    CACHE_MODES,
    CFN,
    TEMPLATE_NAMES,
    cfn_lint,
    checkov_grouped,
    failed_checks,
    lint_problems,
    load_path,
    mode_params,
    rendered_copies,
)

MODE_TEMPLATES = ("main.yaml", "cache.yaml", "observability.yaml", "dashboard.yaml")

_CANARY_LINT_RULES = {"W2001", "E3002"}


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
    bad = lint_problems(cfn_lint_findings[name])
    assert not bad, f"{name}: {bad} (all: {_lint_counts(cfn_lint_findings)})"


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
    return checkov_grouped(files, lambda p: p.name, (*TEMPLATE_NAMES, canary.name))


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
    failed = failed_checks(checkov_results[name])
    assert not failed, f"{name}: {failed} ({_checkov_counts(checkov_results)})"


@pytest.fixture(scope="module")
def mode_copies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One folder per cache mode with MODE_TEMPLATES rendered for that mode: every parameter of
    MODE_DEFAULTS and CacheMode defaulted to switch on each conditional resource of the mode."""
    root = tmp_path_factory.mktemp("cfn-modes")
    return rendered_copies(root, MODE_TEMPLATES, {mode: mode_params(mode) for mode in CACHE_MODES})


def test_rendered_copies_default_to_their_mode(mode_copies: dict[str, Path]) -> None:
    for mode, folder in mode_copies.items():
        for name in MODE_TEMPLATES:
            params = load_path(folder / name)["Parameters"]
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
        for problem in lint_problems(mode_lint_findings[(mode, name)])
    ]
    assert not bad, f"{mode}: {bad}"


@pytest.fixture(scope="module")
def mode_checkov_results(mode_copies: dict[str, Path]) -> dict[str, dict[str, list]]:
    """checkov once over every mode's rendered copies; results by mode."""
    files = [folder / n for folder in mode_copies.values() for n in MODE_TEMPLATES]
    return checkov_grouped(files, lambda p: p.parent.name, CACHE_MODES)


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
    failed = failed_checks(result)
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
