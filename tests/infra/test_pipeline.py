"""The delivery pipeline, checked offline: the GitHub workflows in .github/workflows/, the script
their deploy steps run (scripts/pipeline.sh) and the optional OIDC template
cfn/pipeline/github-oidc.yaml.

The workflows go through GitHub's workflow schema (vendored in check-jsonschema) and zizmor's
offline security audit; actionlint, the usual third checker, cannot be installed here (its PyPI
package downloads its binary while building), so the shell it would check lives in
scripts/pipeline.sh, which shellcheck checks. The template goes through cfn-lint and checkov as
the other templates do. Each tool also gets a canary with known mistakes, so a tool that checks
nothing cannot make these tests pass.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import REPO_ROOT, checkov_report

WORKFLOWS = sorted((REPO_ROOT / ".github" / "workflows").glob("*.yml"))
TEST_WORKFLOW = REPO_ROOT / ".github" / "workflows" / "test.yml"
DEPLOY_WORKFLOW = REPO_ROOT / ".github" / "workflows" / "deploy.yml"
PIPELINE = REPO_ROOT / "scripts" / "pipeline.sh"
OIDC_TEMPLATE = REPO_ROOT / "cfn" / "pipeline" / "github-oidc.yaml"
# zizmor's severities; anything from medium up fails.
BLOCKING = {"Medium", "High"}

CANARY_WORKFLOW = """\
name: canary
on: pull_request_target
jobs:
  build:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
        with:
          ref: ${{ github.event.pull_request.head.sha }}
      - run: echo "${{ github.event.pull_request.title }}"
"""


def _tool(name: str) -> str:
    """A console script of the test venv first, so CI does not depend on PATH order."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (it is in the test lock)")
    return found


def _workflow(path: Path) -> dict[Any, Any]:
    # PyYAML reads the key `on` as True (YAML 1.1); GitHub reads it as "on".
    data = yaml.safe_load(path.read_text())
    data["on"] = data.pop(True)
    return data


def _check_jsonschema(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            _tool("check-jsonschema"),
            "--builtin-schema",
            "vendor.github-workflows",
            *map(str, paths),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _zizmor(*paths: Path) -> list[dict[str, Any]]:
    """zizmor's findings (offline audits only) as JSON; exit 10-14 means findings, not a crash."""
    proc = subprocess.run(
        [_tool("zizmor"), "--offline", "--format", "json", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode in (0, *range(10, 15)), f"zizmor crashed: {proc.stderr}"
    return json.loads(proc.stdout)


def _blocking(findings: list[dict[str, Any]]) -> list[str]:
    return [
        f"{f['ident']} ({f['determinations']['severity']}): {f['desc']}"
        for f in findings
        if f["determinations"]["severity"] in BLOCKING
    ]


def test_the_pipeline_has_its_two_workflows() -> None:
    assert WORKFLOWS == [DEPLOY_WORKFLOW, TEST_WORKFLOW]


def test_workflows_match_githubs_schema(tmp_path: Path) -> None:
    result = _check_jsonschema(*WORKFLOWS)
    assert result.returncode == 0, result.stdout + result.stderr
    canary = tmp_path / "canary.yml"
    canary.write_text(CANARY_WORKFLOW.replace("runs-on:", "runs-onn:"))
    refused = _check_jsonschema(canary)
    assert refused.returncode == 1, "the schema check accepted a job without runs-on"


def test_zizmor_finds_nothing_of_medium_severity_or_more(tmp_path: Path) -> None:
    assert _blocking(_zizmor(*WORKFLOWS)) == []
    canary = tmp_path / "canary.yml"
    canary.write_text(CANARY_WORKFLOW)
    found = {f["ident"] for f in _zizmor(canary) if f["determinations"]["severity"] in BLOCKING}
    assert {"dangerous-triggers", "template-injection", "unpinned-uses"} <= found, found


def test_the_pull_request_workflow_runs_ci_run() -> None:
    """Exactly README's test command, through .ci/run, on every pull request (and for deploys)."""
    workflow = _workflow(TEST_WORKFLOW)
    assert set(workflow["on"]) == {"pull_request", "workflow_call"}
    (job,) = workflow["jobs"].values()
    steps = job["steps"]
    runs = [s.get("run") for s in steps]
    assert "bash .ci/run" in runs
    checkout = next(
        i for i, s in enumerate(steps) if s.get("uses", "").startswith("actions/checkout@")
    )
    assert checkout < runs.index("bash .ci/run")


def test_deploy_runs_only_after_the_tests_and_only_when_switched_on() -> None:
    workflow = _workflow(DEPLOY_WORKFLOW)
    assert workflow["on"]["push"] == {"branches": ["main"]}
    jobs = workflow["jobs"]
    assert jobs["test"]["uses"] == "./.github/workflows/test.yml"
    assert jobs["deploy"]["needs"] == "test"
    assert jobs["deploy"]["if"] == "${{ vars.AWS_ROLE_ARN != '' }}"
    steps = [s.get("run", "") for s in jobs["deploy"]["steps"]]
    (image,) = [s for s in steps if s.startswith("scripts/pipeline.sh image ")]
    (apply,) = [s for s in steps if s.startswith("scripts/pipeline.sh apply ")]
    assert any("-m ops.verify" in s for s in steps)
    # Its own tags: an operator's init.sh build of the same commit (another platform, no SBOM)
    # is never taken for the pipeline's (found by review).
    for step in (image, apply):
        assert step.endswith(' -t "ci-${GITHUB_SHA::12}"'), step


def test_verify_looks_in_the_namespace_the_apply_step_rolled_out_to() -> None:
    """ops.verify reads the kubeconfig context's namespace by default, and init.sh's kubeconfig
    names none: the apply step hands on the stack's AppNamespace (scripts/pipeline.sh writes
    namespace=... to $GITHUB_OUTPUT), through the environment, never spliced into the script."""
    steps = _workflow(DEPLOY_WORKFLOW)["jobs"]["deploy"]["steps"]
    (apply,) = [s for s in steps if s.get("run", "").startswith("scripts/pipeline.sh apply ")]
    (verify,) = [s for s in steps if "-m ops.verify" in s.get("run", "")]
    assert steps.index(apply) < steps.index(verify)
    assert verify["env"]["NAMESPACE"] == f"${{{{ steps.{apply['id']}.outputs.namespace }}}}"
    assert verify["env"]["APP_URL"] == "${{ vars.APP_URL }}"
    assert "${{" not in verify["run"]


def _stand_in(path: Path, answer: str = "") -> None:
    """An executable at ``path`` that records its arguments in PATH.args and prints ``answer``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > "$0.args"\necho {answer}\n')
    path.chmod(0o755)


def _run_step(script: str, bin_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """A workflow step's script as GitHub runs it with `shell: bash` (bash -eo pipefail), with
    ``bin_dir`` (its stand-ins) first on PATH and only ``env`` besides."""
    return subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script],
        env={"PATH": f"{bin_dir}:/usr/bin:/bin", **env},
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("app_url", "expected"),
    [
        ("", ["--namespace", "shop", "--timeout", "600"]),
        # With a certificate: its domain, since the load balancer's name is not on it.
        (
            "https://messages.example.com",
            ["--url", "https://messages.example.com", "--timeout", "600"],
        ),
    ],
)
def test_verify_checks_the_namespace_or_the_domain_the_repository_names(
    tmp_path: Path, app_url: str, expected: list[str]
) -> None:
    """The verify step's script, run as GitHub runs it (bash -eo pipefail), with python3, pip and
    the venv's python replaced by stand-ins that record their arguments."""
    (verify,) = [
        s for s in _workflow(DEPLOY_WORKFLOW)["jobs"]["deploy"]["steps"]
        if "-m ops.verify" in s.get("run", "")
    ]  # fmt: skip
    bin_dir, venv_bin = tmp_path / "bin", tmp_path / "runner" / "verify" / "bin"
    for tool in (bin_dir / "python3", venv_bin / "pip", venv_bin / "python"):
        _stand_in(tool)
    ran = _run_step(verify["run"], bin_dir, RUNNER_TEMP=str(tmp_path / "runner"), NAMESPACE="shop",
                    APP_URL=app_url)  # fmt: skip
    assert ran.returncode == 0, ran.stdout + ran.stderr
    args = (venv_bin / "python.args").read_text().splitlines()
    assert args == ["-m", "ops.verify", *expected]


@pytest.mark.parametrize("newest", ["a" * 40, "b" * 40])
def test_only_the_newest_commit_of_the_branch_deploys(tmp_path: Path, newest: str) -> None:
    """The deploy job's first step, run as GitHub runs it with a stand-in `gh` answering the
    branch's newest commit: a run of an older commit (one that waited while a newer one's run
    went first, or an old run re-run) skips every later step, with a notice, and fails nothing
    (found by review: the concurrency group alone let an older commit deploy over a newer
    one)."""
    workflow = _workflow(DEPLOY_WORKFLOW)
    assert workflow["defaults"] == {"run": {"shell": "bash"}}  # bash -eo pipefail on GitHub
    guard, *later = workflow["jobs"]["deploy"]["steps"]
    assert guard["env"] == {"GH_TOKEN": "${{ github.token }}"}
    assert all(step["if"] == f"steps.{guard['id']}.outputs.deploy == 'true'" for step in later)
    bin_dir = tmp_path / "bin"
    _stand_in(bin_dir / "gh", answer=newest)
    outputs = tmp_path / "github-output"
    this = "a" * 40
    ran = _run_step(guard["run"], bin_dir, GITHUB_REPOSITORY="owner/name", GITHUB_REF_NAME="main",
                    GITHUB_SHA=this, GH_TOKEN="t", GITHUB_OUTPUT=str(outputs))  # fmt: skip
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert (bin_dir / "gh.args").read_text().splitlines() == [
        "api", "repos/owner/name/commits/main", "--jq", ".sha",
    ]  # fmt: skip
    deploy = "true" if newest == this else "false"
    assert outputs.read_text() == f"deploy={deploy}\n"
    if newest != this:
        assert f"not deploying {this}: {newest} is the newest commit of main" in ran.stdout


def test_least_privilege_and_no_stored_aws_key() -> None:
    for path in WORKFLOWS:
        workflow = _workflow(path)
        text = path.read_text()
        assert "pull_request_target" not in text, path.name
        assert workflow["permissions"] == {}, f"{path.name}: nothing by default"
        for name, job in workflow["jobs"].items():
            permissions = job["permissions"]
            assert permissions["contents"] == "read", (path.name, name)
            write = {k for k, v in permissions.items() if v == "write"}
            assert write == ({"id-token"} if name == "deploy" else set()), (path.name, name)
        # Credentials come from the OIDC exchange only: no key, in a secret or otherwise.
        assert not re.search(r"aws-(access-key-id|secret-access-key)|AWS_SECRET|secrets\.", text)


def test_every_action_is_pinned_by_commit() -> None:
    for path in WORKFLOWS:
        for ref in re.findall(r"uses:\s*([^\s#]+)", path.read_text()):
            if not ref.startswith("./"):
                assert re.fullmatch(r"[\w.-]+/[\w./-]+@[0-9a-f]{40}", ref), f"{path.name}: {ref}"


def test_the_pipeline_script_is_clean_shell() -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    result = subprocess.run(
        ["shellcheck", "-x", str(PIPELINE)],
        cwd=PIPELINE.parent,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["-h"], 0, "Usage: pipeline.sh image|apply"),
        ([], 2, "missing the step"),
        (["push"], 2, "unknown step: push"),
        (["image", "-r", "eu-central-1", "-t", "abc"], 2, "missing -p PROFILE"),
        (["apply", "-p", "deploy", "-r", "eu-central-1"], 2, "missing -t TAG"),
    ],
)
def test_the_pipeline_script_refuses_bad_usage(args: list[str], code: int, message: str) -> None:
    result = subprocess.run(
        [str(PIPELINE), *args], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == code, result.stderr
    assert message in result.stdout + result.stderr


# --- cfn/pipeline/github-oidc.yaml --------------------------------------------------------------


def _template() -> dict[str, Any]:
    from cfnlint.decode import decode

    template, matches = decode(str(OIDC_TEMPLATE))
    assert not matches and template is not None, matches
    return template


def _cfn_lint(path: Path) -> list[dict[str, Any]]:
    proc = subprocess.run(
        [
            *(_tool("cfn-lint"), "--format", "json", "--regions", "us-east-1", "eu-central-1"),
            *("--", str(path)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    # Exit status is a bit mask of the levels found (2 error, 4 warning, 8 info); 1 is a crash.
    assert proc.returncode in range(0, 16, 2), f"cfn-lint crashed: {proc.stderr}"
    return json.loads(proc.stdout or "[]")


def test_the_oidc_template_is_clean_for_cfn_lint(tmp_path: Path) -> None:
    findings = _cfn_lint(OIDC_TEMPLATE)
    assert [f for f in findings if f["Level"] in ("Error", "Warning")] == []
    canary = tmp_path / "canary.yaml"
    canary.write_text(OIDC_TEMPLATE.read_text().replace("MaxSessionDuration:", "MaxSession:", 1))
    assert any(f["Level"] == "Error" for f in _cfn_lint(canary)), "cfn-lint saw no mistake"


def test_the_oidc_template_passes_checkov(tmp_path: Path) -> None:
    canary = tmp_path / "canary.yaml"
    canary.write_text(
        OIDC_TEMPLATE.read_text().replace("Action: eks:DescribeCluster", "Action: '*'", 1)
    )
    report = checkov_report([OIDC_TEMPLATE, canary], "cloudformation")
    failed: dict[str, list[str]] = {OIDC_TEMPLATE.name: [], canary.name: []}
    for check in report["results"]["failed_checks"]:
        failed[Path(check["file_path"]).name].append(check["check_id"])
    assert failed[OIDC_TEMPLATE.name] == []
    assert failed[canary.name], "checkov passed a policy allowing every action"


def test_only_the_repositorys_branch_may_assume_the_role() -> None:
    role = _template()["Resources"]["DeployRole"]["Properties"]
    statements = role["AssumeRolePolicyDocument"]["Statement"]
    assert {s["Action"] for s in statements} == {
        "sts:AssumeRoleWithWebIdentity",
        "sts:TagSession",
    }
    for statement in statements:
        # StringEquals, never StringLike: no wildcard can widen the subject.
        assert set(statement["Condition"]) == {"StringEquals"}
        condition = statement["Condition"]["StringEquals"]
        assert condition["token.actions.githubusercontent.com:aud"] == "sts.amazonaws.com"
        assert condition["token.actions.githubusercontent.com:sub"] == {
            "Fn::Sub": "repo:${GitHubRepository}:ref:refs/heads/${Branch}"
        }


def test_the_role_may_do_only_what_the_deploy_needs() -> None:
    template = _template()
    (policy,) = template["Resources"]["DeployRole"]["Properties"]["Policies"]
    actions = {}
    for statement in policy["PolicyDocument"]["Statement"]:
        assert statement["Effect"] == "Allow"
        for action in (
            [statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"]
        ):
            actions[action] = statement["Resource"]
    assert not [a for a in actions if "*" in a]
    # Only the ECR login token cannot name a resource.
    assert [a for a, r in actions.items() if r == "*"] == ["ecr:GetAuthorizationToken"]
    assert {a.split(":")[0] for a in actions} == {
        "ecr",
        "cloudformation",
        "eks",
        "secretsmanager",
        "kms",
    }
    access = template["Resources"]["DeployAccess"]["Properties"]
    scopes = {
        p["PolicyArn"]["Fn::Sub"].rsplit("/", 1)[1]: p["AccessScope"]
        for p in access["AccessPolicies"]
    }
    assert scopes == {
        "AmazonEKSEditPolicy": {"Type": "namespace", "Namespaces": [{"Ref": "Namespace"}]},
        "AmazonEKSViewPolicy": {"Type": "namespace", "Namespaces": ["kube-system"]},
    }
    # With the ALB, the overlay's cluster-scoped objects, which no namespace's policy covers:
    # the group the ALB component lets read them by name, and nothing more (found by review:
    # the pipeline's apply was refused on them).
    role, binding = yaml.safe_load_all(
        (REPO_ROOT / "k8s" / "components" / "alb" / "deployer.yaml").read_text()
    )
    assert access["KubernetesGroups"] == [s["name"] for s in binding["subjects"]]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert {verb for rule in role["rules"] for verb in rule["verbs"]} == {"get"}
    assert all(rule["resourceNames"] for rule in role["rules"])
    assert "DeployRoleArn" in template["Outputs"]
