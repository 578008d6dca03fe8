"""deploy.sh, init.sh and destroy.sh, run for real against moto's server with the real AWS CLI.

Real in every test: the scripts, bash, jq, git, openssl, the AWS CLI (.venv/bin/aws), and in
moto (one server per module, reset before each test): STS (assume-role, caller identity),
CloudFormation validate-template (moto runs cfn-lint), the bootstrap stack from the real
cfn/bootstrap.yaml with its S3 bucket and ECR repository, stack outputs, describe-stack-resources
and delete-stack, S3 uploads, object versions, delete markers and DeleteObjects, ECR images, login
tokens and BatchDeleteImage, EKS describe-cluster/update-kubeconfig, Secrets Manager; and
`kubectl kustomize` (offline) on the real k8s/.

Stood in by tests/stubs/standin.py, which records every call (argv) of aws, kubectl and the
builders: the main stack's template (moto skips EKS and ElastiCache inside CloudFormation and fails
on their attributes, so create/update-stack of the main stack get a template with main.yaml's real
parameters and fixed outputs), a failing main stack (moto never fails one), kubectl against a
cluster, and docker/podman/buildah. Each test's docstring names what it adds to this.
"""

from __future__ import annotations

import base64
import json
import os
import pty
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests
import yaml
from botocore.exceptions import ClientError

from .support import ROOT, free_port, wait_until

SCRIPTS = ("deploy.sh", "init.sh", "destroy.sh")
LIBRARY = "scripts/common.sh"  # sourced by all three scripts, never run on its own
PROFILE = "ci"
REGION = "eu-central-1"
ACCOUNT = "123456789012"
STACK = "flask-eks-sessions"  # the scripts' default
BOOTSTRAP = f"{STACK}-bootstrap"
OTHER_STACK = "Fes--Other"  # for -s; its ECR repository must still get a valid (lower-case) name
# The profile's role, with a path as SSO roles have: only IAM knows it, the session ARN does not.
DEPLOYER_ROLE = f"arn:aws:iam::{ACCOUNT}:role/team/deployer"
CLUSTER = "fes-test-cluster"
CACHE_HOST = "master.fes-test-cache.abc123.euc1.cache.amazonaws.com"
NESTED = ("network.yaml", "securitygroups.yaml", "cache.yaml", "eks.yaml")
MAIN_STACK_ID = f"arn:aws:cloudformation:{REGION}:{ACCOUNT}:stack/{OTHER_STACK}/main-0001"
NESTED_STACK_ID = f"arn:aws:cloudformation:{REGION}:{ACCOUNT}:stack/{OTHER_STACK}-Cache-X/n-0001"
# Everything the scripts may run besides the stand-ins; a tool missing here fails a test, which
# keeps this list the scripts' real dependency list.
BASE_TOOLS = (
    "bash", "env", "cat", "grep", "sed", "head", "tr", "od", "sort", "mkdir", "mktemp", "rm", "mv",
    "chmod", "date", "dirname", "git", "openssl", "jq", "sleep",
)  # fmt: skip
BUILDERS = ("docker", "podman", "buildah")
STANDIN = ROOT / "tests" / "stubs" / "standin.py"
REAL_AWS = Path(sys.executable).parent / "aws"
MOTO_SERVER = Path(sys.executable).parent / "moto_server"
AWS_FIXTURES = ROOT / "tests" / "fixtures" / "aws"
# What deploy.sh picks in moto's eu-central-1 (zone IDs euc1-az1..3, none refused by EKS).
ZONES = "eu-central-1a,eu-central-1b,eu-central-1c"
VPC = "vpc-0fe5f00dfe5f00d00"
CERTIFICATE = f"arn:aws:acm:{REGION}:{ACCOUNT}:certificate/0b1c2d3e-1111-2222-3333-444455556666"

pytestmark = [
    pytest.mark.skipif(not REAL_AWS.exists(), reason="AWS CLI (pip package awscli) not installed"),
    pytest.mark.skipif(shutil.which("jq") is None, reason="jq not installed (apt-get install jq)"),
    pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed"),
]


@pytest.fixture(scope="module")
def moto_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One moto server for the module (it starts in about a second); tests reset it instead."""
    if not MOTO_SERVER.exists():
        pytest.skip("moto_server (pip package moto[server]) not installed")
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=log.parent,  # moto may write scratch files into its working directory
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _reset(url), timeout=30, what="moto server")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _reset(url: str) -> bool:
    try:
        return requests.post(f"{url}/moto-api/reset", timeout=5).status_code == 200
    except requests.ConnectionError:
        return False


def option(argv: Sequence[str], name: str) -> str | None:
    """The value after `name` in argv, if any."""
    for i, arg in enumerate(argv[:-1]):
        if arg == name:
            return argv[i + 1]
    return None


def operation(call: dict[str, Any]) -> tuple[str, ...]:
    """An aws call as (service, operation, subject): profile, region and other options left out."""
    argv = call["argv"]
    words: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("--profile", "--region"):
            skip = True
        elif not arg.startswith("-"):
            words.append(arg)
        if len(words) == 2:
            break
    subject = next(
        (
            option(argv, name)
            for name in (
                "--stack-name",
                "--bucket",
                "--repository-name",
                "--name",
                "--secret-id",
                "--role-name",
            )
            if option(argv, name)
        ),
        "",
    )
    return (*words, subject)


@dataclass
class Run:
    """A finished script run and the calls it made."""

    returncode: int
    stdout: str
    stderr: str
    calls: list[dict[str, Any]]

    def tool(self, name: str) -> list[dict[str, Any]]:
        return [c for c in self.calls if c["tool"] == name]

    def ops(self) -> list[tuple[str, ...]]:
        return [operation(c) for c in self.tool("aws")]

    def aws_calls(self, service: str, name: str) -> list[dict[str, Any]]:
        """The aws calls of one operation, in order (looked up by operation, not by position)."""
        return [c for c in self.tool("aws") if operation(c)[:2] == (service, name)]

    def main_stack_parameters(self, stack: str = STACK) -> dict[str, str]:
        """The parameters deploy.sh gave the main stack's create-stack or update-stack call."""
        (argv,) = [
            c["argv"]
            for c in self.tool("aws")
            if operation(c)[1:] in (("create-stack", stack), ("update-stack", stack))
        ]
        parameters = json.loads(option(argv, "--parameters") or "[]")
        return {p["ParameterKey"]: p["ParameterValue"] for p in parameters}


@dataclass
class World:
    """A copy of the repository, an AWS profile in moto, and stand-ins on PATH."""

    root: Path
    tmp: Path
    moto_url: str
    env: dict[str, str]
    secret_arn: str = ""
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.tmp / "calls.jsonl"

    def client(self, service: str) -> Any:
        return boto3.client(
            service,
            region_name=REGION,
            endpoint_url=self.moto_url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def bin_dir(self, without: Sequence[str] = (), builders: Sequence[str] = ("docker",)) -> Path:
        """PATH for a run: the base tools and stand-ins, less the ones a test takes away."""
        name = "bin-" + "-".join(["with", *builders, "without", *without])
        path = self.tmp / name
        if path.exists():
            return path
        path.mkdir()
        links = {tool: shutil.which(tool) for tool in BASE_TOOLS}
        links["python3"] = sys.executable
        for tool in ("aws", "kubectl", *builders):
            links[tool] = str(STANDIN)
        for tool, target in links.items():
            if tool not in without:
                assert target, f"{tool} is not installed"
                (path / tool).symlink_to(target)
        return path

    def run(
        self,
        script: str,
        *args: str,
        without: Sequence[str] = (),
        builders: Sequence[str] = ("docker",),
        env: dict[str, str] | None = None,
        stdin: int | None = subprocess.DEVNULL,
    ) -> Run:
        """Runs a script from the repository copy; returns its output and the calls it made."""
        self.log.write_text("")
        proc = subprocess.run(
            [str(self.root / script), *args],
            cwd=self.root,
            env={**self.env, "PATH": str(self.bin_dir(without, builders)), **(env or {})},
            stdin=stdin,
            capture_output=True,
            text=True,
            timeout=120,
        )
        calls = [json.loads(line) for line in self.log.read_text().splitlines()]
        return Run(proc.returncode, proc.stdout, proc.stderr, calls)

    def create_stacks(self, certificate: str = "") -> dict[str, str]:
        """What a successful deploy.sh leaves behind, made directly (faster than running it).

        Real moto bootstrap stack from cfn/bootstrap.yaml, nested templates in its bucket, and the
        main stack from the stand-in template (the same one the aws stand-in substitutes).
        """
        cfn = self.client("cloudformation")
        body = (self.root / "cfn" / "bootstrap.yaml").read_text()
        cfn.create_stack(StackName=BOOTSTRAP, TemplateBody=body)
        outputs = stack_outputs(cfn, BOOTSTRAP)
        s3 = self.client("s3")
        for name in NESTED:
            s3.put_object(
                Bucket=outputs["TemplateBucketName"],
                Key=name,
                Body=(self.root / "cfn" / name).read_bytes(),
            )
        cfn.create_stack(
            StackName=STACK,
            TemplateBody=Path(self.env["STUB_MAIN_TEMPLATE"]).read_text(),
            Parameters=[
                {"ParameterKey": "TemplateBucket", "ParameterValue": outputs["TemplateBucketName"]},
                {"ParameterKey": "EcrRepositoryUri", "ParameterValue": outputs["EcrRepositoryUri"]},
                {
                    "ParameterKey": "ClusterAdminPrincipalArn",
                    "ParameterValue": DEPLOYER_ROLE,
                },
                {"ParameterKey": "AvailabilityZones", "ParameterValue": ZONES},
                {"ParameterKey": "CertificateArn", "ParameterValue": certificate},
            ],
            Capabilities=["CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND"],
        )
        return outputs

    def create_cluster(self) -> None:
        """The EKS cluster the main stack would have made (moto's EKS API, not CloudFormation)."""
        self.client("eks").create_cluster(
            name=CLUSTER,
            roleArn=f"arn:aws:iam::{ACCOUNT}:role/eks",
            resourcesVpcConfig={"subnetIds": ["subnet-1", "subnet-2"]},
        )


def stack_outputs(cfn: Any, name: str) -> dict[str, str]:
    stack = cfn.describe_stacks(StackName=name)["Stacks"][0]
    return {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}


def main_standin_template(secret_arn: str) -> str:
    """main.yaml's real Parameters (moto checks the scripts' values against them), fixed Outputs."""
    from cfnlint.decode import decode

    main, matches = decode(str(ROOT / "cfn" / "main.yaml"))
    assert main is not None, matches
    template = {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Parameters": json.loads(json.dumps(main["Parameters"])),
        "Conditions": json.loads(json.dumps(main["Conditions"])),
        "Resources": {"Placeholder": {"Type": "AWS::CloudFormation::WaitConditionHandle"}},
        "Outputs": {
            "ClusterName": {"Value": CLUSTER},
            "CachePrimaryEndpoint": {"Value": CACHE_HOST},
            "CachePort": {"Value": "6379"},
            "CacheTls": {"Value": "true"},
            "AuthTokenSecretArn": {"Value": secret_arn},
            "Region": {"Value": {"Ref": "AWS::Region"}},
            "EcrRepositoryUri": {"Value": {"Ref": "EcrRepositoryUri"}},
            "CertificateArn": {
                "Condition": "HasCertificate",
                "Value": {"Ref": "CertificateArn"},
            },
        },
    }
    return json.dumps(template, indent=1)


def git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=root, check=True, capture_output=True, text=True, timeout=30
    ).stdout.strip()


@pytest.fixture
def world(tmp_path: Path, moto_url: str) -> World:
    """A fresh moto, a committed copy of the repository, and an assumed-role profile `ci`."""
    pytest.importorskip("cfnlint", reason="cfn-lint not installed")
    assert _reset(moto_url)
    root = tmp_path / "repo"
    root.mkdir()
    for script in SCRIPTS:
        shutil.copy2(ROOT / script, root / script)
    shutil.copytree(ROOT / "scripts", root / "scripts")
    shutil.copytree(ROOT / "cfn", root / "cfn")
    shutil.copytree(ROOT / "k8s", root / "k8s")
    home = tmp_path / "home"
    home.mkdir()
    (tmp_path / "tmp").mkdir()
    env = {
        "HOME": str(home),
        "TMPDIR": str(tmp_path / "tmp"),
        "LANG": "C.UTF-8",
        "GIT_AUTHOR_NAME": "test",
        "GIT_AUTHOR_EMAIL": "test@example.invalid",
        "GIT_COMMITTER_NAME": "test",
        "GIT_COMMITTER_EMAIL": "test@example.invalid",
        "GIT_CONFIG_NOSYSTEM": "1",
        "AWS_CONFIG_FILE": str(tmp_path / "aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "aws-credentials"),
        "AWS_ENDPOINT_URL": moto_url,
        "AWS_PAGER": "",
        "AWS_EC2_METADATA_DISABLED": "true",
        "KUBECONFIG": str(home / ".kube" / "config"),
        "STUB_LOG": str(tmp_path / "calls.jsonl"),
        "STUB_PROFILE": PROFILE,
        "STUB_REGION": REGION,
        "STUB_MAIN_STACK": STACK,
        "STUB_MAIN_STACK_ID": MAIN_STACK_ID,
        "STUB_NESTED_STACK_ID": NESTED_STACK_ID,
        "STUB_MAIN_TEMPLATE": str(tmp_path / "main-standin.json"),
        "REAL_AWS": str(REAL_AWS),
        "REAL_KUBECTL": str(shutil.which("kubectl")),
    }
    subprocess.run(["git", "init", "-q"], cwd=root, env=env, check=True, timeout=30)
    subprocess.run(["git", "add", "."], cwd=root, env=env, check=True, timeout=30)
    subprocess.run(["git", "commit", "-qm", "copy"], cwd=root, env=env, check=True, timeout=30)
    w = World(root=root, tmp=tmp_path, moto_url=moto_url, env=env)
    # The profile is an assumed-role session, as with SSO or a role: deploy.sh must turn it into
    # the role's ARN for the EKS access entry.
    iam = w.client("iam")
    iam.create_role(RoleName="deployer", Path="/team/", AssumeRolePolicyDocument="{}")
    creds = w.client("sts").assume_role(RoleArn=DEPLOYER_ROLE, RoleSessionName="alice")[
        "Credentials"
    ]
    (tmp_path / "aws-credentials").write_text(
        f"[{PROFILE}]\naws_access_key_id = {creds['AccessKeyId']}\n"
        f"aws_secret_access_key = {creds['SecretAccessKey']}\n"
        f"aws_session_token = {creds['SessionToken']}\n"
        "[noregion]\naws_access_key_id = testing\naws_secret_access_key = testing\n"
    )
    (tmp_path / "aws-config").write_text(f"[profile {PROFILE}]\nregion = {REGION}\n")
    w.secret_arn = w.client("secretsmanager").create_secret(
        Name="fes-test-auth-token", SecretString=json.dumps({"token": "tok-first-0123456789"})
    )["ARN"]
    Path(env["STUB_MAIN_TEMPLATE"]).write_text(main_standin_template(w.secret_arn))
    return w


def assert_profile_and_region(run: Run) -> None:
    """Every aws call names the profile and the region (the region lookup: only the profile)."""
    assert run.tool("aws"), "no aws call at all"
    for call in run.tool("aws"):
        argv = call["argv"]
        assert option(argv, "--profile") == PROFILE, argv
        if argv[:3] != ["configure", "get", "region"]:
            assert option(argv, "--region") == REGION, argv


# ---------------------------------------------------------------------------------------------
# Bad input: nothing but argument parsing and `command -v` runs, so no stand-in is ever called.


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        ((), 2, "missing -p PROFILE"),
        (("-p", PROFILE, "-x"), 2, "unknown option -x"),
        (("-p",), 2, "option -p needs a value"),
        (("-p", PROFILE, "extra"), 2, "unexpected argument: extra"),
    ],
)
def test_bad_arguments_print_usage_and_exit_2(
    world: World, script: str, args: tuple[str, ...], code: int, message: str
) -> None:
    """Real: the scripts' argument parsing. No AWS, kubectl or builder call may happen."""
    run = world.run(script, *args)
    assert run.returncode == code
    assert f"{script}: {message}" in run.stderr
    assert "Usage:" in run.stderr
    assert run.calls == []


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_says_what_changed_from_the_original(world: World, script: str) -> None:
    """Real: -h prints the usage on stdout, exit 0, and touches nothing."""
    run = world.run(script, "-h")
    assert run.returncode == 0
    assert f"Usage: {script} -p PROFILE [-r REGION] [-s STACK_NAME]" in run.stdout
    assert "Changed from the original sample" in run.stdout
    assert run.calls == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("-u", "alice"), "-u needs -n REPO"),
        (("-n", "app"), "-n REPO needs -u DOCKERHUB_USER"),
    ],
)
def test_init_docker_hub_flags_come_in_pairs(
    world: World, args: tuple[str, ...], message: str
) -> None:
    """Real: init.sh's parsing (-r became the region, so a lone -u must not guess a repository)."""
    run = world.run("init.sh", "-p", PROFILE, *args)
    assert run.returncode == 2
    assert message in run.stderr
    assert run.calls == []


@pytest.mark.parametrize(
    ("script", "without", "named"),
    [
        ("deploy.sh", ("aws",), "aws (AWS CLI) is missing"),
        ("deploy.sh", ("jq",), "jq is missing"),
        ("init.sh", ("kubectl",), "kubectl is missing"),
        ("init.sh", ("jq",), "jq is missing"),
        ("init.sh", ("docker",), "none of docker, podman, buildah is installed"),
        ("destroy.sh", ("kubectl",), "kubectl is missing"),
        ("destroy.sh", ("aws", "jq"), "aws (AWS CLI) is missing"),
    ],
)
def test_missing_prerequisite_is_named_before_anything_runs(
    world: World, script: str, without: tuple[str, ...], named: str
) -> None:
    """Real: the prerequisite checks, with the tools really absent from PATH."""
    args = ["-p", PROFILE, *(["-y"] if script == "destroy.sh" else [])]
    run = world.run(script, *args, without=without)
    assert run.returncode == 1
    lines = run.stderr.splitlines()
    assert len(lines) == len(without), run.stderr
    assert any(named in line and "install" in line for line in lines), run.stderr
    assert run.calls == []


def test_region_is_required_when_the_profile_has_none(world: World) -> None:
    """Real: `aws configure get region` (moto not involved) for a profile without a region."""
    run = world.run("deploy.sh", "-p", "noregion")
    assert run.returncode == 1
    assert "no region: pass -r REGION" in run.stderr
    assert run.ops() == [("configure", "get", "")]


# ---------------------------------------------------------------------------------------------
# deploy.sh


def test_deploy_creates_both_stacks_and_a_rerun_changes_nothing(world: World) -> None:
    """Real: every call in moto except that the main stack runs the stand-in template.

    Checks the order of the calls, the validated templates, the uploaded templates (byte for byte
    in moto's S3), the parameters the main stack got (moto checks them against main.yaml's
    AllowedPattern), the printed outputs and next command; then a second run is "No changes".
    """
    run = world.run("deploy.sh", "-p", PROFILE)
    assert run.returncode == 0, run.stderr
    templates = sorted(p.name for p in (world.root / "cfn").glob("*.yaml"))
    assert run.ops() == [
        ("configure", "get", ""),
        ("cloudformation", "describe-stacks", STACK),
        ("ec2", "describe-availability-zones", ""),
        ("sts", "get-caller-identity", ""),
        ("iam", "get-role", "deployer"),
        *[("cloudformation", "validate-template", "")] * len(templates),
        ("cloudformation", "describe-stacks", BOOTSTRAP),
        ("cloudformation", "create-stack", BOOTSTRAP),
        ("cloudformation", "wait", BOOTSTRAP),
        ("cloudformation", "describe-stacks", BOOTSTRAP),
        ("s3", "cp", ""),
        ("cloudformation", "describe-stacks", STACK),
        ("cloudformation", "create-stack", STACK),
        ("cloudformation", "wait", STACK),
        ("cloudformation", "describe-stacks", STACK),
    ]
    assert_profile_and_region(run)
    validated = [
        option(c["argv"], "--template-body")
        for c in run.tool("aws")
        if operation(c)[1] == "validate-template"
    ]
    assert validated == [f"file://{world.root}/cfn/{name}" for name in templates]
    assert f"Availability Zones: {ZONES} (chosen by zone ID" in run.stdout
    assert "WARNING: no certificate (-c): the app will be served over plain HTTP" in run.stderr

    cfn = world.client("cloudformation")
    boot = stack_outputs(cfn, BOOTSTRAP)
    s3 = world.client("s3")
    for name in NESTED:
        body = s3.get_object(Bucket=boot["TemplateBucketName"], Key=name)["Body"].read()
        assert body == (world.root / "cfn" / name).read_bytes()

    create = next(c["argv"] for c in run.tool("aws") if operation(c)[1:] == ("create-stack", STACK))
    assert option(create, "--template-body") == f"file://{world.root}/cfn/main.yaml"
    params = {
        p["ParameterKey"]: p["ParameterValue"] for p in json.loads(option(create, "--parameters"))
    }
    assert params == {
        "TemplateBucket": boot["TemplateBucketName"],
        "EcrRepositoryUri": boot["EcrRepositoryUri"],
        # The assumed-role session arn:aws:sts::...:assumed-role/deployer/alice, as its role:
        "ClusterAdminPrincipalArn": DEPLOYER_ROLE,
        "AvailabilityZones": ZONES,
        "CertificateArn": "",
    }
    capabilities = create[create.index("--capabilities") + 1 :][:2]
    assert capabilities == ["CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND"]
    assert cfn.describe_stacks(StackName=STACK)["Stacks"][0]["StackStatus"] == "CREATE_COMPLETE"
    assert f"ClusterName\t{CLUSTER}" in run.stdout
    assert f"CachePrimaryEndpoint\t{CACHE_HOST}" in run.stdout
    assert f"./init.sh -p {PROFILE} -r {REGION} -s {STACK}" in run.stdout

    assert boot["EcrRepositoryName"] == f"{STACK}/message-app"

    again = world.run("deploy.sh", "-p", PROFILE)
    assert again.returncode == 0, again.stderr
    assert f"No changes to deploy: stack {BOOTSTRAP} is up to date" in again.stdout
    assert f"No changes to deploy: stack {STACK} is up to date" in again.stdout
    assert ("cloudformation", "update-stack", STACK) in again.ops()
    assert not [op for op in again.ops() if op[1] == "create-stack"]
    # The existing stack's zones are kept, not chosen again (new zones would replace every subnet).
    assert ("ec2", "describe-availability-zones", "") not in again.ops()
    assert f"Availability Zones: {ZONES} (those of the existing stack {STACK})" in again.stdout
    assert f"./init.sh -p {PROFILE} -r {REGION} -s {STACK}" in again.stdout
    assert_profile_and_region(again)


def test_deploy_failed_main_stack_prints_the_failures_and_a_rerun_recreates_it(
    world: World,
) -> None:
    """Real: validation, bootstrap stack, uploads in moto. Stand-in: the main stack's waiter fails
    and its events (and the failed nested stack's) are canned, as CloudFormation reports them; the
    stack then reads ROLLBACK_COMPLETE until the re-run deletes it (in moto) and recreates it.

    Also checks -r, -s, -a and -o: no region lookup, no caller lookup, overrides passed as JSON
    (a comma-separated list value stays whole).
    """
    subnets = "10.0.1.0/24,10.0.2.0/24,10.0.3.0/24"
    admin = f"arn:aws:iam::{ACCOUNT}:role/admins"
    run = world.run(
        "deploy.sh", "-p", PROFILE, "-r", REGION, "-s", OTHER_STACK, "-a", admin,
        "-o", "CacheReplicaCount=0", "-o", f"PublicSubnets={subnets}",
        env={"STUB_MAIN_FAILS": "1", "STUB_MAIN_STACK": OTHER_STACK},
    )  # fmt: skip
    assert run.returncode == 1
    assert f"creating stack {OTHER_STACK} failed (events above)" in run.stderr
    assert f"failed events of stack {OTHER_STACK}:" in run.stderr
    assert "CacheStack  AWS::CloudFormation::Stack  CREATE_FAILED" in run.stderr
    assert f"failed events of stack {NESTED_STACK_ID}:" in run.stderr
    assert "STUB-CACHE-QUOTA: cache node quota exceeded" in run.stderr
    assert "STUB-OLD-FAILURE" not in run.stderr, "an earlier operation's failure was shown"
    assert "Next:" not in run.stdout
    ops = run.ops()
    assert ops[:3] == [
        ("cloudformation", "describe-stacks", OTHER_STACK),
        ("ec2", "describe-availability-zones", ""),
        ("cloudformation", "validate-template", ""),
    ]
    assert not [op for op in ops if op[0] in ("sts", "iam", "configure")]
    assert ops[-3:] == [
        ("cloudformation", "wait", OTHER_STACK),
        ("cloudformation", "describe-stack-events", OTHER_STACK),
        ("cloudformation", "describe-stack-events", NESTED_STACK_ID),
    ]
    assert_profile_and_region(run)
    create = next(
        c["argv"] for c in run.tool("aws") if operation(c)[1:] == ("create-stack", OTHER_STACK)
    )
    params = {
        p["ParameterKey"]: p["ParameterValue"] for p in json.loads(option(create, "--parameters"))
    }
    assert params["ClusterAdminPrincipalArn"] == admin
    assert params["CacheReplicaCount"] == "0"
    assert params["PublicSubnets"] == subnets
    boot = stack_outputs(world.client("cloudformation"), f"{OTHER_STACK}-bootstrap")
    assert boot["EcrRepositoryName"] == "fes-other/message-app"

    # The cause fixed, a re-run replaces the rolled-back stack (which cannot be updated).
    again = world.run(
        "deploy.sh", "-p", PROFILE, "-r", REGION, "-s", OTHER_STACK, "-a", admin,
        env={"STUB_MAIN_STACK": OTHER_STACK},
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert (
        "is ROLLBACK_COMPLETE from an earlier creation that did not finish: deleting it"
        in again.stdout
    )
    assert "STUB-CACHE-QUOTA" in again.stderr
    assert again.ops()[-8:] == [
        ("cloudformation", "describe-stacks", OTHER_STACK),
        ("cloudformation", "describe-stack-events", OTHER_STACK),
        ("cloudformation", "describe-stack-events", NESTED_STACK_ID),
        ("cloudformation", "delete-stack", OTHER_STACK),
        ("cloudformation", "wait", OTHER_STACK),
        ("cloudformation", "create-stack", OTHER_STACK),
        ("cloudformation", "wait", OTHER_STACK),
        ("cloudformation", "describe-stacks", OTHER_STACK),
    ]
    assert_profile_and_region(again)
    assert f"./init.sh -p {PROFILE} -r {REGION} -s {OTHER_STACK}" in again.stdout


def test_deploy_stops_at_an_invalid_template(world: World) -> None:
    """Real: moto's validate-template (cfn-lint) rejects a broken cache.yaml; nothing is made."""
    cache = world.root / "cfn" / "cache.yaml"
    cache.write_text(cache.read_text() + "\n  Broken:\n    Value: !Ref NoSuchResource\n")
    run = world.run("deploy.sh", "-p", PROFILE)
    assert run.returncode == 1
    assert "template cache.yaml is invalid" in run.stderr
    assert not [op for op in run.ops() if op[1] in ("create-stack", "update-stack", "cp")]
    assert world.client("cloudformation").describe_stacks()["Stacks"] == []


def test_deploy_chooses_zones_by_id_skipping_those_eks_refuses(world: World) -> None:
    """Real: everything in moto's us-east-1 as in the first deploy test. Recorded: the account's
    describe-availability-zones answer (tests/fixtures/aws), where us-east-1b is use1-az3: the
    first three names, which `!Select [n, !GetAZs ""]` took, would have failed after ten minutes.
    """
    run = world.run(
        "deploy.sh", "-p", PROFILE, "-r", "us-east-1",
        env={"STUB_AZ_FIXTURE": str(AWS_FIXTURES / "describe-availability-zones-us-east-1.json")},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    (call,) = run.aws_calls("ec2", "describe-availability-zones")
    assert option(call["argv"], "--filters") == "Name=zone-type,Values=availability-zone"
    chosen = "us-east-1a,us-east-1c,us-east-1d"
    assert run.main_stack_parameters()["AvailabilityZones"] == chosen
    assert f"Availability Zones: {chosen} (chosen by zone ID; EKS refuses use1-az3" in run.stdout


@pytest.mark.parametrize(
    ("fixture", "listed"),
    [
        # moto's own us-west-1: two zones, as most accounts see it.
        (None, "us-west-1a (usw1-az3), us-west-1b (usw1-az1)"),
        # An account that still sees usw1-az2: three zones, two usable.
        (
            "describe-availability-zones-us-west-1-three.json",
            "us-west-1a (usw1-az1), us-west-1b (usw1-az3)",
        ),
    ],
)
def test_deploy_stops_before_creating_anything_without_three_usable_zones(
    world: World, fixture: str | None, listed: str
) -> None:
    """Real: moto's us-west-1 zones, or a recorded answer; the region check comes before any
    stack, bucket or template call."""
    env = {"STUB_AZ_FIXTURE": str(AWS_FIXTURES / fixture)} if fixture else {}
    run = world.run("deploy.sh", "-p", PROFILE, "-r", "us-west-1", env=env)
    assert run.returncode == 1
    assert (
        f"deploy.sh: region us-west-1 has 2 Availability Zones EKS can use ({listed}), 3 are "
        "needed (EKS refuses use1-az3 usw1-az2 cac1-az3): choose another region with -r; "
        "nothing was created"
    ) in run.stderr
    assert run.ops() == [
        ("cloudformation", "describe-stacks", STACK),
        ("ec2", "describe-availability-zones", ""),
    ]
    assert "Next:" not in run.stdout


def test_deploy_keeps_the_certificate_of_the_stack_until_told_otherwise(world: World) -> None:
    """Real, all in moto: a stack deployed with -c. A re-run without -c keeps its certificate
    (HTTPS does not vanish because an option was left out); `-c none` returns to plain HTTP,
    with the warning."""
    world.create_stacks(certificate=CERTIFICATE)
    run = world.run("deploy.sh", "-p", PROFILE)
    assert run.returncode == 0, run.stderr
    assert run.main_stack_parameters()["CertificateArn"] == CERTIFICATE
    assert "WARNING" not in run.stderr
    assert ("ec2", "describe-availability-zones", "") not in run.ops()
    assert run.main_stack_parameters()["AvailabilityZones"] == ZONES
    assert f"CertificateArn\t{CERTIFICATE}" in run.stdout

    plain = world.run("deploy.sh", "-p", PROFILE, "-c", "none")
    assert plain.returncode == 0, plain.stderr
    assert plain.main_stack_parameters()["CertificateArn"] == ""
    assert "WARNING: no certificate (-c)" in plain.stderr
    assert "CertificateArn" not in plain.stdout


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (
            ("-c", CERTIFICATE.replace(REGION, "us-east-1")),
            1,
            f"is not in {REGION}: the load balancer can only use an ACM certificate of its own",
        ),
        (("-c", "my-cert"), 2, "-c needs an ACM certificate ARN"),
        (("-o", "AvailabilityZones=a,b,c"), 2, "AvailabilityZones is set by deploy.sh itself"),
    ],
)
def test_deploy_refuses_a_wrong_certificate_or_zone_override(
    world: World, args: tuple[str, ...], code: int, message: str
) -> None:
    """Real: the checks before any AWS call but the profile's region lookup."""
    run = world.run("deploy.sh", "-p", PROFILE, *args)
    assert run.returncode == code
    assert message in run.stderr
    assert run.ops() in ([], [("configure", "get", "")])


# ---------------------------------------------------------------------------------------------
# init.sh


def rendered(root: Path) -> dict[str, dict[str, Any]]:
    """The overlay as the real `kubectl kustomize` renders it, by kind."""
    out = subprocess.run(
        [shutil.which("kubectl") or "kubectl", "kustomize", str(root / ".deploy")],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout  # fmt: skip
    # The cluster-wide setting in kube-system (NetworkPolicy enforcement) is keyed apart.
    return {
        ("kube-system/" if d["metadata"].get("namespace") == "kube-system" else "") + d["kind"]: d
        for d in yaml.safe_load_all(out)
        if d
    }


def env_file(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines())


def test_init_pushes_to_ecr_and_writes_the_overlay_then_reruns(world: World) -> None:
    """Real: stacks, ECR login token and image lookup, EKS update-kubeconfig, Secrets Manager in
    moto; git for the tag; kubectl kustomize on the real k8s/. Stand-in: docker (its push puts the
    tag into moto's ECR, so the re-run finds it) and kubectl.
    """
    boot = world.create_stacks()
    world.create_cluster()
    uri = boot["EcrRepositoryUri"]
    registry = uri.split("/")[0]
    tag = git(world.root, "rev-parse", "--short=12", "HEAD")

    run = world.run("init.sh", "-p", PROFILE)
    assert run.returncode == 0, run.stderr
    assert run.ops() == [
        ("configure", "get", ""),
        ("cloudformation", "describe-stacks", STACK),
        ("eks", "update-kubeconfig", CLUSTER),
        ("ecr", "describe-images", boot["EcrRepositoryName"]),
        ("ecr", "get-login-password", ""),
        ("secretsmanager", "get-secret-value", world.secret_arn),
    ]
    assert_profile_and_region(run)
    password = base64.b64decode(
        world.client("ecr").get_authorization_token()["authorizationData"][0]["authorizationToken"]
    ).decode()
    docker = run.tool("docker")
    assert [c["argv"] for c in docker] == [
        ["login", "--username", "AWS", "--password-stdin", registry],
        ["build", "--platform", "linux/amd64", "-t", f"{uri}:{tag}", str(world.root)],
        ["push", f"{uri}:{tag}"],
    ]
    assert docker[0]["stdin"].strip() == password.split(":", 1)[1]
    assert [c["argv"] for c in run.tool("kubectl")] == [["kustomize", str(world.root / ".deploy")]]

    deploy_dir = world.root / ".deploy"
    assert stat.S_IMODE(deploy_dir.stat().st_mode) == 0o700
    secrets = deploy_dir / "secrets.env"
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o600
    values = env_file(secrets)
    assert values["REDIS_AUTH_TOKEN"] == "tok-first-0123456789"
    assert re.fullmatch(r"[0-9a-f]{64}", values["SECRET_KEY"])
    for secret in values.values():
        assert secret not in run.stdout + run.stderr
    assert git(world.root, "status", "--porcelain") == "", (
        "a tracked file changed or .deploy/ shows"
    )

    kinds = rendered(world.root)
    config = kinds["ConfigMap"]["data"]
    assert config["REDIS_HOST"] == CACHE_HOST
    assert (config["REDIS_PORT"], config["REDIS_TLS"]) == ("6379", "true")
    assert config["SESSION_COOKIE_SECURE"] == "false"
    assert config["LOG_LEVEL"] == "INFO", "the base's other settings must survive the merge"
    secret_data = {k: base64.b64decode(v).decode() for k, v in kinds["Secret"]["data"].items()}
    assert secret_data == values
    (container,) = kinds["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert container["image"] == f"{uri}:{tag}"
    assert f"cluster/{CLUSTER}" in Path(world.env["KUBECONFIG"]).read_text()
    assert "the one command that deploys the app" in run.stdout
    assert "kubectl apply -k .deploy/" in run.stdout
    assert "open http://EXTERNAL-IP/" in run.stdout
    # No certificate: plain HTTP on port 80, said out loud.
    assert "WARNING: no certificate: the load balancer serves plain HTTP" in run.stderr
    service = kinds["Service"]
    assert [(p["name"], p["port"]) for p in service["spec"]["ports"]] == [("http", 80)]
    # The overlay lifts the base's guard namespace from every object of the app, and switches on
    # NetworkPolicy enforcement (EKS Auto Mode's network policy controller).
    cni = kinds.pop("kube-system/ConfigMap")
    assert cni["data"] == {"enable-network-policy-controller": "true"}
    assert [d["metadata"].get("namespace") for d in kinds.values()] == [None] * len(kinds)

    world.client("secretsmanager").put_secret_value(
        SecretId=world.secret_arn, SecretString=json.dumps({"token": "tok-rotated-987654321"})
    )
    again = world.run("init.sh", "-p", PROFILE)
    assert again.returncode == 0, again.stderr
    assert f"image {uri}:{tag} is already in ECR" in again.stdout
    assert again.tool("docker") == []
    after = env_file(secrets)
    assert after["SECRET_KEY"] == values["SECRET_KEY"], "a new SECRET_KEY would end every session"
    assert after["REDIS_AUTH_TOKEN"] == "tok-rotated-987654321"


@pytest.mark.parametrize("builder", BUILDERS)
def test_init_pushes_to_docker_hub_with_the_builder_found(world: World, builder: str) -> None:
    """Real: stacks, EKS, Secrets Manager in moto; kubectl kustomize. Stand-in: the one builder on
    PATH, kubectl. With -u/-n no ECR call is made; -t and -P go to the build. The buildah run also
    has no openssl, so SECRET_KEY comes from /dev/urandom through od.
    """
    world.create_stacks()
    world.create_cluster()
    image = "docker.io/alice/message-app:v1"
    run = world.run(
        "init.sh", "-p", PROFILE, "-u", "alice", "-n", "message-app", "-t", "v1",
        "-P", "linux/arm64", builders=(builder,),
        without=("openssl",) if builder == "buildah" else (),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert not [op for op in run.ops() if op[0] == "ecr"]
    assert_profile_and_region(run)
    build = "bud" if builder == "buildah" else "build"
    push = ["push", image, f"docker://{image}"] if builder == "buildah" else ["push", image]
    assert [c["argv"] for c in run.tool(builder)] == [
        [build, "--platform", "linux/arm64", "-t", image, str(world.root)],
        push,
    ]
    (container,) = rendered(world.root)["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert container["image"] == image
    assert f"builder {builder}" in run.stdout
    assert re.fullmatch(
        r"[0-9a-f]{64}", env_file(world.root / ".deploy" / "secrets.env")["SECRET_KEY"]
    )


@pytest.mark.parametrize("source", ["stack", "option"])
def test_init_with_a_certificate_writes_the_https_overlay(world: World, source: str) -> None:
    """Real: stacks (the certificate as the main stack's output, or -c), EKS, Secrets Manager in
    moto; kubectl kustomize renders the overlay with k8s/components/https. Stand-in: docker."""
    world.create_stacks(certificate=CERTIFICATE if source == "stack" else "")
    world.create_cluster()
    args = ("-c", CERTIFICATE) if source == "option" else ()
    run = world.run("init.sh", "-p", PROFILE, *args)
    assert run.returncode == 0, run.stderr
    assert "WARNING" not in run.stderr
    assert "open https://EXTERNAL-IP/" in run.stdout
    kinds = rendered(world.root)
    service = kinds["Service"]
    # TLS on 443 only: port 80 is closed (an NLB cannot redirect), the pods still get plain 8080.
    assert service["spec"]["ports"] == [
        {"name": "https", "port": 443, "targetPort": "http", "protocol": "TCP"}
    ]
    annotations = service["metadata"]["annotations"]
    assert annotations["service.beta.kubernetes.io/aws-load-balancer-ssl-cert"] == CERTIFICATE
    assert annotations["service.beta.kubernetes.io/aws-load-balancer-ssl-ports"] == "https"
    assert kinds["ConfigMap"]["data"]["SESSION_COOKIE_SECURE"] == "true"
    assert kinds["ConfigMap"]["data"]["REDIS_HOST"] == CACHE_HOST


def test_init_refuses_a_certificate_of_another_region(world: World) -> None:
    """Real: the stack read from moto; nothing is built or written for a certificate the NLB
    could not use."""
    world.create_stacks()
    world.create_cluster()
    other = CERTIFICATE.replace(REGION, "us-east-1")
    run = world.run("init.sh", "-p", PROFILE, "-c", other)
    assert run.returncode == 1
    assert f"certificate {other} is not an ACM certificate ARN in {REGION}" in run.stderr
    assert run.tool("docker") == []
    assert not (world.root / ".deploy").exists()


def test_init_without_a_deployed_stack_says_to_run_deploy(world: World) -> None:
    """Real: describe-stacks in moto answers "does not exist"; nothing is built or written."""
    run = world.run("init.sh", "-p", PROFILE)
    assert run.returncode == 1
    assert f"stack {STACK} does not exist in {REGION}: run ./deploy.sh -p {PROFILE}" in run.stderr
    assert run.tool("docker") == []
    assert not (world.root / ".deploy").exists()
    assert_profile_and_region(run)


# ---------------------------------------------------------------------------------------------
# destroy.sh


def fill_bucket(world: World, bucket: str) -> list[dict[str, str]]:
    """Old versions and a delete marker, as template uploads over time and a removed template leave.

    moto's CloudFormation ignores VersioningConfiguration, so versioning is switched on here.
    """
    s3 = world.client("s3")
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    for body in (b"v1", b"v2"):
        for key in ("network.yaml", "old/removed.yaml"):
            s3.put_object(Bucket=bucket, Key=key, Body=body)
    s3.delete_object(Bucket=bucket, Key="old/removed.yaml")
    listing = s3.list_object_versions(Bucket=bucket)
    entries = listing.get("Versions", []) + listing.get("DeleteMarkers", [])
    return sorted(({"Key": e["Key"], "VersionId": e["VersionId"]} for e in entries), key=str)


def test_destroy_removes_kubernetes_objects_stacks_versions_and_images(world: World) -> None:
    """Real: init.sh's overlay, EKS, stacks, S3 versions/delete markers, ECR images in moto (the
    bucket is only deleted with its stack when it is empty). Stand-in: kubectl against the cluster.
    """
    boot = world.create_stacks()
    world.create_cluster()
    assert world.run("init.sh", "-p", PROFILE).returncode == 0
    user_kubeconfig = Path(world.env["KUBECONFIG"]).read_text()
    bucket, repo = boot["TemplateBucketName"], boot["EcrRepositoryName"]
    entries = fill_bucket(world, bucket)
    # Versions from before versioning was on carry the version id "null"; they must go too.
    assert {e["VersionId"] for e in entries} >= {"null"}
    ecr = world.client("ecr")
    for i in range(120):  # more than one BatchDeleteImage (100 at most)
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {"digest": f"sha256:{i:064x}"},
            "layers": [],
        }
        ecr.put_image(repositoryName=repo, imageManifest=json.dumps(manifest), imageTag=f"t{i}")

    run = world.run("destroy.sh", "-p", PROFILE, "-y", env={"STUB_CLUSTER_VPC": VPC})
    assert run.returncode == 0, run.stderr
    assert run.ops() == [
        ("configure", "get", ""),
        ("cloudformation", "describe-stacks", STACK),
        ("eks", "describe-cluster", CLUSTER),
        ("eks", "update-kubeconfig", CLUSTER),
        ("elbv2", "describe-load-balancers", ""),
        ("elbv2", "describe-target-groups", ""),
        ("ec2", "describe-security-groups", ""),
        ("cloudformation", "delete-stack", STACK),
        ("cloudformation", "wait", STACK),
        ("cloudformation", "describe-stacks", BOOTSTRAP),
        ("cloudformation", "describe-stack-resources", BOOTSTRAP),
        ("s3api", "list-object-versions", bucket),
        ("s3api", "delete-objects", bucket),
        ("s3api", "list-object-versions", bucket),
        ("ecr", "list-images", repo),
        ("ecr", "batch-delete-image", repo),
        ("ecr", "batch-delete-image", repo),
        ("cloudformation", "delete-stack", BOOTSTRAP),
        ("cloudformation", "wait", BOOTSTRAP),
    ]
    assert_profile_and_region(run)
    (update_kubeconfig,) = run.aws_calls("eks", "update-kubeconfig")
    kubeconfig = option(update_kubeconfig["argv"], "--kubeconfig")
    assert kubeconfig and kubeconfig != world.env["KUBECONFIG"]
    delete, wait = run.tool("kubectl")
    assert delete["argv"] == [
        "--kubeconfig", kubeconfig, "delete", "-k", str(world.root / ".deploy"),
        "--ignore-not-found", "--wait=true",
    ]  # fmt: skip
    assert f"cluster/{CLUSTER}" in delete["kubeconfig_text"]
    assert wait["argv"][2:] == ["wait", "--for=delete", "service/message-app", "--timeout=600s"]
    assert Path(world.env["KUBECONFIG"]).read_text() == user_kubeconfig
    assert not Path(kubeconfig).exists(), "the temporary kubeconfig was left behind"
    (delete_objects,) = run.aws_calls("s3api", "delete-objects")
    (payload,) = delete_objects["files"].values()
    assert json.loads(payload)["Quiet"] is True
    assert sorted(json.loads(payload)["Objects"], key=str) == entries
    chunks = [
        json.loads(option(c["argv"], "--image-ids") or "")
        for c in run.aws_calls("ecr", "batch-delete-image")
    ]
    assert [len(chunk) for chunk in chunks] == [100, 21]

    cfn = world.client("cloudformation")
    assert cfn.describe_stacks()["Stacks"] == []
    with pytest.raises(ClientError):
        world.client("s3").head_bucket(Bucket=bucket)
    assert ecr.describe_repositories()["repositories"] == []
    assert (
        f"bucket {bucket}: deleted {len(entries)} object versions and delete markers" in run.stdout
    )
    assert f"repository {repo}: deleted 121 images" in run.stdout
    assert f"no load balancer, target group or security group of the Service is left in {VPC}" in (
        run.stdout
    )


def test_destroy_waits_until_eks_has_removed_the_load_balancer(world: World) -> None:
    """Real: stacks, EKS, the final empty answers in moto. Recorded: the first two polls still
    find the Service's NLB, its target group and security group in the cluster's VPC (EKS removes
    them a while after the Service); the main stack is deleted only after that.
    """
    world.create_stacks()
    world.create_cluster()
    run = world.run(
        "destroy.sh", "-p", PROFILE, "-y",
        env={"STUB_CLUSTER_VPC": VPC, "STUB_LB_LEFT": "2", "LB_WAIT_INTERVAL": "0"},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert len(run.aws_calls("elbv2", "describe-load-balancers")) == 3
    waiting = [line for line in run.stdout.splitlines() if "waiting for EKS to delete" in line]
    assert (
        waiting
        == [
            "==> waiting for EKS to delete: load balancer k8s-default-messagea-0123456789, "
            "target group k8s-default-messagea-abcdef0123, security group sg-0lb0000000000000"
        ]
        * 2
    )
    ops = run.ops()
    assert ops.index(("cloudformation", "delete-stack", STACK)) > max(
        i for i, op in enumerate(ops) if op[1] == "describe-security-groups"
    )
    (sg_call, *_) = run.aws_calls("ec2", "describe-security-groups")
    assert option(sg_call["argv"], "--filters") == f"Name=vpc-id,Values={VPC}"
    # Without .deploy/ the Service is deleted by name.
    (delete, _) = run.tool("kubectl")
    assert delete["argv"][2:] == [
        "delete",
        "service",
        "message-app",
        "--ignore-not-found",
        "--wait=true",
    ]


def test_destroy_keeps_the_stacks_while_the_load_balancer_is_still_there(world: World) -> None:
    """Recorded: the NLB never goes within the limit; deleting the VPC under it would fail
    half-way, so the script stops with what is left and deletes no stack."""
    world.create_stacks()
    world.create_cluster()
    run = world.run(
        "destroy.sh", "-p", PROFILE, "-y",
        env={"STUB_CLUSTER_VPC": VPC, "STUB_LB_LEFT": "99", "LB_WAIT_SECONDS": "0"},
    )  # fmt: skip
    assert run.returncode == 1
    assert "load balancer k8s-default-messagea-0123456789" in run.stderr
    assert f"these are still in {VPC} after 0s and would keep the VPC from being deleted" in (
        run.stderr
    )
    assert not [op for op in run.ops() if op[1] == "delete-stack"]


def test_destroy_finishes_a_half_deleted_environment_and_reruns(world: World) -> None:
    """Real, all in moto: the main stack is already gone while the bootstrap stack still holds a
    versioned bucket (where the original's destroy.sh got stuck). A second run finds nothing to do.

    (moto cannot delete a stack whose ECR repository was removed by hand, CloudFormation can, so
    the repository stays.)
    """
    boot = world.create_stacks()
    world.client("cloudformation").delete_stack(StackName=STACK)
    fill_bucket(world, boot["TemplateBucketName"])

    run = world.run("destroy.sh", "-p", PROFILE, "-y")
    assert run.returncode == 0, run.stderr
    assert f"stack {STACK}: already gone" in run.stdout
    assert f"repository {boot['EcrRepositoryName']}: deleted 0 images" in run.stdout
    assert run.tool("kubectl") == []
    assert ("cloudformation", "delete-stack", BOOTSTRAP) in run.ops()
    assert_profile_and_region(run)
    assert world.client("cloudformation").describe_stacks()["Stacks"] == []
    with pytest.raises(ClientError):
        world.client("s3").head_bucket(Bucket=boot["TemplateBucketName"])

    again = world.run("destroy.sh", "-p", PROFILE, "-y")
    assert again.returncode == 0, again.stderr
    assert f"stack {STACK}: already gone" in again.stdout
    assert f"stack {BOOTSTRAP}: already gone" in again.stdout
    assert again.ops() == [
        ("configure", "get", ""),
        ("cloudformation", "describe-stacks", STACK),
        ("cloudformation", "describe-stacks", BOOTSTRAP),
    ]
    assert_profile_and_region(again)


def test_destroy_keeps_the_stacks_when_kubernetes_objects_cannot_be_deleted(world: World) -> None:
    """Real: stacks and EKS in moto. Stand-in: kubectl answers Unauthorized. Deleting the VPC
    under a live load balancer would fail half-way, so nothing else may be deleted.
    """
    world.create_stacks()
    world.create_cluster()
    run = world.run("destroy.sh", "-p", PROFILE, "-y", env={"STUB_KUBECTL_FAILS": "1"})
    assert run.returncode == 1
    assert "could not delete service message-app; its load balancer would block" in run.stderr
    assert not [op for op in run.ops() if op[1] == "delete-stack"]
    assert len(world.client("cloudformation").describe_stacks()["Stacks"]) == 2
    assert_profile_and_region(run)


def test_destroy_stops_at_a_failed_deletion_and_shows_why(world: World) -> None:
    """Real: stacks in moto, no cluster. Stand-in: the main stack's delete waiter fails and its
    canned events follow (as in the deploy test), so destroy.sh shows the latest operation's
    failures down into the nested stack and keeps the bootstrap stack for a retry.
    """
    world.create_stacks()
    run = world.run("destroy.sh", "-p", PROFILE, "-y", env={"STUB_MAIN_FAILS": "1"})
    assert run.returncode == 1
    assert f"deleting stack {STACK} failed (events above)" in run.stderr
    assert f"failed events of stack {NESTED_STACK_ID}:" in run.stderr
    assert "STUB-CACHE-QUOTA: cache node quota exceeded" in run.stderr
    assert "STUB-OLD-FAILURE" not in run.stderr, "an earlier operation's failure was shown"
    assert run.ops()[-3:] == [
        ("cloudformation", "wait", STACK),
        ("cloudformation", "describe-stack-events", STACK),
        ("cloudformation", "describe-stack-events", NESTED_STACK_ID),
    ]
    assert ("cloudformation", "delete-stack", BOOTSTRAP) not in run.ops()
    assert_profile_and_region(run)


def test_destroy_without_a_terminal_or_y_refuses(world: World) -> None:
    """Real: the confirmation check with stdin not a terminal; only the region is looked up."""
    world.create_stacks()
    run = world.run("destroy.sh", "-p", PROFILE)
    assert run.returncode == 1
    assert "no terminal to ask on; pass -y" in run.stderr
    assert run.ops() == [("configure", "get", "")]
    assert len(world.client("cloudformation").describe_stacks()["Stacks"]) == 2


@pytest.mark.parametrize(("answer", "confirmed"), [("yes", False), (STACK, True)])
def test_destroy_asks_for_the_stack_name_on_a_terminal(
    world: World, answer: str, confirmed: bool
) -> None:
    """Real: the prompt on a pseudo-terminal; with nothing deployed, a confirmed run only looks."""
    controller, terminal = pty.openpty()
    try:
        os.write(controller, f"{answer}\n".encode())
        run = world.run("destroy.sh", "-p", PROFILE, stdin=terminal)
    finally:
        os.close(terminal)
        os.close(controller)
    assert f"Type the stack name ({STACK}) to confirm" in run.stdout
    if confirmed:
        assert run.returncode == 0, run.stderr
        assert f"stack {BOOTSTRAP}: already gone" in run.stdout
        assert_profile_and_region(run)
    else:
        assert run.returncode == 1
        assert "not confirmed; nothing was deleted" in run.stderr
        assert run.ops() == [("configure", "get", "")]


# ---------------------------------------------------------------------------------------------
# Static checks


def test_scripts_pass_shellcheck() -> None:
    """Real shellcheck (apt package shellcheck) on the three scripts and their library; -x follows
    the `source` into the library, so names it defines count as defined in the scripts."""
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed (apt-get install shellcheck; CI installs it)")
    result = subprocess.run(
        ["shellcheck", "-x", *SCRIPTS, LIBRARY],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_are_executable_with_strict_mode(script: str) -> None:
    """Each is run directly and sets the strict mode itself; the library it sources sets none."""
    path = ROOT / script
    assert os.access(path, os.X_OK)
    text = path.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text


@pytest.mark.parametrize("script", [*SCRIPTS, LIBRARY])
def test_scripts_avoid_gnu_only_tools(script: str) -> None:
    """They must run on macOS (bash 3.2, BSD tools) as well as on Linux."""
    text = (ROOT / script).read_text()
    gnu_only = (
        r"sed -i", r"readlink -f", r"date -d", r"base64 -w", r"mktemp --", r"grep -P",
        r"declare -A", r"mapfile", r"readarray", r"\$\{\w+,,\}", r"\$\{\w+\^\^\}",
    )  # fmt: skip
    for pattern in gnu_only:
        assert not re.search(pattern, text), f"{script} uses {pattern}"


def test_templates_fit_the_template_body_limit() -> None:
    """deploy.sh passes every template as --template-body, which CloudFormation caps at 51,200
    bytes; a bigger one would need --template-url from the bucket."""
    for template in sorted((ROOT / "cfn").glob("*.yaml")):
        assert template.stat().st_size <= 51_200, f"{template.name} is too big for --template-body"
