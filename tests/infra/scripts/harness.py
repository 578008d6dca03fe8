"""The harness for the script tests in this folder: deploy.sh, init.sh and destroy.sh run for real
against moto's server with the real AWS CLI.

Real in every test: the scripts, bash, jq, git, openssl, the AWS CLI (.venv/bin/aws), and in
moto (one server for the folder, reset before each test): STS (assume-role, caller identity),
CloudFormation validate-template (moto runs cfn-lint), the bootstrap stack from the real
cfn/bootstrap.yaml with its S3 bucket and ECR repository, stack outputs, describe-stack-resources
and delete-stack, S3 uploads, object versions, delete markers and DeleteObjects, ECR images, login
tokens and BatchDeleteImage, EKS describe-cluster/update-kubeconfig, Secrets Manager; and
`kubectl kustomize` (offline) on the real k8s/.

Speed: the AWS CLI is imported once per test process and forked for each call
(tests/stubs/awsfork.py: the same `aws` script, minus some 0.3 s of start-up per call); moto's
validate-template answer is replayed for a template with the same bytes (cached by content hash
for the run), and the tests that only parse options share one World. Calls are looked up by
operation (`Run.aws_calls`), never by their position in the log.

Stood in by tests/stubs/standin.py, which records every call (argv) of aws, kubectl and the
builders: the main stack's template (moto skips EKS and ElastiCache inside CloudFormation and fails
on their attributes, so create/update-stack of the main stack get a template with main.yaml's real
parameters and fixed outputs), recorded main-stack operations (tests/fixtures/aws/stack-events:
moto creates a stack at once, never fails one, and has no nested stacks), kubectl against a
cluster, docker/podman/buildah, and recorded answers from tests/fixtures/aws (zone mappings moto
does not have, a load balancer EKS has not removed yet). Each test's docstring names what it adds.
"""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests
import yaml

from tests.support import REPO_ROOT

SCRIPTS = ("deploy.sh", "init.sh", "destroy.sh")
# Sourced by the scripts, never run on their own: what all three share, and the stack-following
# loop of deploy.sh and destroy.sh.
LIBRARIES = ("scripts/common.sh", "scripts/progress.sh")
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
CLUSTER_CACHE_HOST = "clustercfg.fes-test-cache.abc123.euc1.cache.amazonaws.com"
SERVERLESS_CACHE_HOST = "fes-0123456789ab-abc123.serverless.euc1.cache.amazonaws.com"
NESTED = (
    "network.yaml",
    "securitygroups.yaml",
    "cache.yaml",
    "eks.yaml",
    "app.yaml",
    "observability.yaml",
    "dashboard.yaml",
    "edge.yaml",
)
# Everything the scripts may run besides the stand-ins; a tool missing here fails a test, which
# keeps this list the scripts' real dependency list.
BASE_TOOLS = (
    "bash", "env", "cat", "grep", "sed", "head", "tr", "od", "sort", "mkdir", "mktemp", "rm", "mv",
    "chmod", "date", "dirname", "git", "openssl", "jq", "sleep", "awk",
)  # fmt: skip
BUILDERS = ("docker", "podman", "buildah")
STANDIN = REPO_ROOT / "tests" / "stubs" / "standin.py"
AWSFORK = REPO_ROOT / "tests" / "stubs" / "awsfork.py"
REAL_AWS = Path(sys.executable).parent / "aws"
MOTO_SERVER = Path(sys.executable).parent / "moto_server"
AWS_FIXTURES = REPO_ROOT / "tests" / "fixtures" / "aws"
# Recorded main-stack operations, played by the stand-in (STUB_MAIN_EVENTS).
STACK_EVENTS = AWS_FIXTURES / "stack-events"
# What deploy.sh picks in moto's eu-central-1 (zone IDs euc1-az1..3, none refused by EKS).
ZONES = "eu-central-1a,eu-central-1b,eu-central-1c"
VPC = "vpc-0fe5f00dfe5f00d00"
SERVERLESS_PW = "pw-serverless-0123456789abcdef"
# The app's SECRET_KEY as cfn/app.yaml's secret holds it first (Secrets Manager generates it there).
FIRST_SECRET_KEY = "FirstSecretKey0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQ"
IAM_USER = "fes-app-0123456789ab"  # cache.yaml's IAM user: id and name alike
CACHE_NAME = "fes-test-cache"  # the replication group id or Serverless cache name
APP_NAMESPACE = "default"
CERTIFICATE = f"arn:aws:acm:{REGION}:{ACCOUNT}:certificate/0b1c2d3e-1111-2222-3333-444455556666"
WEB_ACL = (
    f"arn:aws:wafv2:{REGION}:{ACCOUNT}:regional/webacl/fes-test-cluster-edge/"
    "a1b2c3d4-5678-90ab-cdef-111122223333"
)
ACCESS_LOG_BUCKET = "fes-test-edge-accesslogbucket-0a1b2c3d4e5f"


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
    """An aws call as (service, operation, subject): profile, region and other options left out;
    a stack named by its id (arn:...:stack/NAME/ID) as NAME."""
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
    if subject.startswith("arn:aws:cloudformation:"):
        subject = subject.split("/")[1]
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

    def _main_stack_parameter_list(self, stack: str) -> list[dict[str, Any]]:
        (argv,) = [
            c["argv"]
            for c in self.tool("aws")
            if operation(c)[1:] in (("create-stack", stack), ("update-stack", stack))
        ]
        return json.loads(option(argv, "--parameters") or "[]")

    def main_stack_parameters(self, stack: str = STACK) -> dict[str, str]:
        """The parameter values deploy.sh set in the main stack's create-stack or update-stack
        call (not those it asked to keep, see kept_parameters)."""
        return {
            p["ParameterKey"]: p["ParameterValue"]
            for p in self._main_stack_parameter_list(stack)
            if "ParameterValue" in p
        }

    def kept_parameters(self, stack: str = STACK) -> set[str]:
        """The parameters deploy.sh passed with UsePreviousValue (and no value) in that call."""
        parameters = self._main_stack_parameter_list(stack)
        kept = {p["ParameterKey"] for p in parameters if p.get("UsePreviousValue") is True}
        assert not [
            p for p in parameters if "ParameterValue" not in p and p["ParameterKey"] not in kept
        ]
        return kept


@dataclass
class World:
    """A copy of the repository, an AWS profile in moto, and stand-ins on PATH."""

    root: Path
    tmp: Path
    moto_url: str
    env: dict[str, str]
    secret_arn: str = ""
    secret_key_arn: str = ""
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
            # A bound on a hung script, not a speed check: a deploy run makes some thirty AWS
            # CLI calls, validates ten templates (moto lints each the first time in the test
            # session, about two seconds each) and follows its stacks; on a loaded 2-core
            # machine with both xdist workers busy one run took over 300 s.
            timeout=600,
        )
        calls = [json.loads(line) for line in self.log.read_text().splitlines()]
        return Run(proc.returncode, proc.stdout, proc.stderr, calls)

    def use_cache_mode(self, mode: str, auth: str = "token") -> None:
        """The main stand-in answers as a stack of this cache mode and authentication; with a
        password, serverless gets its own secret, {"username", "password"}, as cfn/cache.yaml
        makes it."""
        if mode == "serverless" and auth == "token":
            self.secret_arn = self.client("secretsmanager").create_secret(
                Name="fes-test-user-password",
                SecretString=json.dumps({"username": "message-app", "password": SERVERLESS_PW}),
            )["ARN"]
        template = main_standin_template(self.secret_arn, self.secret_key_arn, mode, auth)
        Path(self.env["STUB_MAIN_TEMPLATE"]).write_text(template)

    def create_stacks(
        self, certificate: str = "", parameters: dict[str, str] | None = None
    ) -> dict[str, str]:
        """What a successful deploy.sh leaves behind, made directly (faster than running it).

        Real moto bootstrap stack from cfn/bootstrap.yaml, nested templates in its bucket, and the
        main stack from the stand-in template (the same one the aws stand-in substitutes), with
        `parameters` as if given with -o and -m on that first run.
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
                {"ParameterKey": key, "ParameterValue": value}
                for key, value in {
                    "TemplateBucket": outputs["TemplateBucketName"],
                    "EcrRepositoryUri": outputs["EcrRepositoryUri"],
                    "ClusterAdminPrincipalArn": DEPLOYER_ROLE,
                    "AvailabilityZones": ZONES,
                    "CertificateArn": certificate,
                    **(parameters or {}),
                }.items()
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


def stack_parameters(cfn: Any, name: str) -> dict[str, str]:
    """A stack's parameters as CloudFormation lists them: moto writes a CommaDelimitedList given
    explicitly as a Python list ("['a', 'b']"), CloudFormation as the string it was given."""
    stack = cfn.describe_stacks(StackName=name)["Stacks"][0]
    return {
        p["ParameterKey"]: ",".join(ast.literal_eval(v))
        if (v := p["ParameterValue"]).startswith("[")
        else v
        for p in stack.get("Parameters", [])
    }


def stack_outputs(cfn: Any, name: str) -> dict[str, str]:
    stack = cfn.describe_stacks(StackName=name)["Stacks"][0]
    return {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}


# What the stand-in main stack answers per cache mode (the values cfn/cache.yaml's outputs give),
# and "legacy": a replication-group stack deployed before CacheMode, with the old names only.
CACHE_MODE_OUTPUTS: dict[str, dict[str, str]] = {
    "replication-group": {
        "CacheMode": "replication-group",
        "CacheHost": CACHE_HOST,
        "CachePrimaryEndpoint": CACHE_HOST,
        "CacheCluster": "false",
        "CacheSecretKey": "token",
    },
    "cluster": {
        "CacheMode": "cluster",
        "CacheHost": CLUSTER_CACHE_HOST,
        "CachePrimaryEndpoint": CLUSTER_CACHE_HOST,
        "CacheCluster": "true",
        "CacheSecretKey": "token",
    },
    "serverless": {
        "CacheMode": "serverless",
        "CacheHost": SERVERLESS_CACHE_HOST,
        "CachePrimaryEndpoint": SERVERLESS_CACHE_HOST,
        "CacheCluster": "true",
        "CacheUsername": "message-app",
        "CacheSecretKey": "password",
    },
    "legacy": {"CachePrimaryEndpoint": CACHE_HOST},
}


def main_standin_template(
    secret_arn: str, secret_key_arn: str, mode: str = "replication-group", auth: str = "token"
) -> str:
    """main.yaml's real Parameters (moto checks the scripts' values against them), fixed Outputs
    for one cache mode and authentication (with a password, the secret named by secret_arn holds
    that mode's credential; secret_key_arn holds SECRET_KEY)."""
    from cfnlint.decode import decode

    main, matches = decode(str(REPO_ROOT / "cfn" / "main.yaml"))
    assert main is not None, matches
    cache = {name: {"Value": value} for name, value in CACHE_MODE_OUTPUTS[mode].items()}
    secret = "AuthTokenSecretArn" if mode in ("legacy", "replication-group") else "CacheSecretArn"
    if mode == "replication-group":
        cache["CacheSecretArn"] = {"Value": secret_arn}
    if mode == "cluster":
        cache["AuthTokenSecretArn"] = {"Value": secret_arn}
    if mode != "legacy":  # SECRET_KEY in Secrets Manager came after CacheMode
        cache |= {
            "CacheAuth": {"Value": auth},
            "CacheName": {"Value": CACHE_NAME},
            "SecretKeyArn": {"Value": secret_key_arn},
            # main.yaml's parameter (default: APP_NAMESPACE), as main.yaml's output gives it.
            "AppNamespace": {"Value": {"Ref": "AppNamespace"}},
        }
    if auth == "iam":  # no cache secret at all, the IAM user instead
        for name in ("CacheSecretArn", "CacheSecretKey", "AuthTokenSecretArn"):
            cache.pop(name, None)
        cache["CacheUsername"] = {"Value": IAM_USER}
        secret = ""
    template = {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Parameters": json.loads(json.dumps(main["Parameters"])),
        "Conditions": json.loads(json.dumps(main["Conditions"])),
        "Resources": {"Placeholder": {"Type": "AWS::CloudFormation::WaitConditionHandle"}},
        "Outputs": {
            "ClusterName": {"Value": CLUSTER},
            **cache,
            "CachePort": {"Value": "6379"},
            "CacheTls": {"Value": "true"},
            **({secret: {"Value": secret_arn}} if secret else {}),
            "Region": {"Value": {"Ref": "AWS::Region"}},
            "EcrRepositoryUri": {"Value": {"Ref": "EcrRepositoryUri"}},
            "CertificateArn": {
                "Condition": "HasCertificate",
                "Value": {"Ref": "CertificateArn"},
            },
            # The edge (cfn/edge.yaml): the web ACL and log bucket exist with an ALB only.
            "LoadBalancerType": {"Value": {"Ref": "LoadBalancerType"}},
            "WebAclArn": {"Condition": "IsAlb", "Value": WEB_ACL},
            "AccessLogBucket": {"Condition": "IsAlb", "Value": ACCESS_LOG_BUCKET},
            # main.yaml's default subnets, fixed: moto's Fn::Join splits a list parameter's
            # string into characters.
            "PublicSubnetCidrs": {"Value": "10.0.1.0/24,10.0.2.0/24,10.0.3.0/24"},
            "PrivateSubnetCidrs": {"Value": "10.0.4.0/24,10.0.5.0/24,10.0.6.0/24"},
        },
    }
    return json.dumps(template, indent=1)


def git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=root, check=True, capture_output=True, text=True, timeout=30
    ).stdout.strip()


def make_world(tmp_path: Path, moto_url: str, validate_cache: Path, aws_server: str) -> World:
    """Resets moto, copies and commits the repository, and signs the profile `ci` in."""
    pytest.importorskip("cfnlint", reason="cfn-lint not installed")
    assert _reset(moto_url)
    root = tmp_path / "repo"
    root.mkdir()
    for script in SCRIPTS:
        shutil.copy2(REPO_ROOT / script, root / script)
    shutil.copytree(REPO_ROOT / "scripts", root / "scripts")
    shutil.copytree(REPO_ROOT / "cfn", root / "cfn")
    shutil.copytree(REPO_ROOT / "k8s", root / "k8s")
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
        # The scripts' own stack-following loop polls without pausing (a recorded sequence
        # moves one step per poll, see standin.py).
        "STACK_POLL_SECONDS": "0",
        "STUB_MAIN_TEMPLATE": str(tmp_path / "main-standin.json"),
        "STUB_VALIDATE_CACHE": str(validate_cache),
        "STUB_AWS_SERVER": aws_server,
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
    w.secret_key_arn = w.client("secretsmanager").create_secret(
        Name="fes-test-secret-key", SecretString=FIRST_SECRET_KEY
    )["ARN"]
    Path(env["STUB_MAIN_TEMPLATE"]).write_text(
        main_standin_template(w.secret_arn, w.secret_key_arn)
    )
    return w


def assert_profile_and_region(run: Run) -> None:
    """Every aws call names the profile and the region (the region lookup: only the profile)."""
    assert run.tool("aws"), "no aws call at all"
    for call in run.tool("aws"):
        argv = call["argv"]
        assert option(argv, "--profile") == PROFILE, argv
        if argv[:3] != ["configure", "get", "region"]:
            assert option(argv, "--region") == REGION, argv


def assert_usage_refused(run: Run, message: str) -> None:
    """The script refused its arguments as a usage error (exit 2) with ``message``, before it
    called any tool."""
    assert run.returncode == 2, run.stderr
    assert message in run.stderr
    assert run.calls == []


def cloudformation(stack: str, names: str) -> list[tuple[str, ...]]:
    """The cloudformation operations ``names`` (in order, by spaces) on ``stack``, as ``Run.ops``
    lists them."""
    return [("cloudformation", name, stack) for name in names.split()]


def followed_creation(stack: str) -> list[tuple[str, ...]]:
    """A creation deploy.sh follows on its own loop, in moto (created at once: one poll)."""
    return cloudformation(
        stack, "describe-stacks create-stack describe-stacks describe-stack-events describe-stacks"
    )


def followed_deletion(stack: str) -> list[tuple[str, ...]]:
    """A deletion destroy.sh follows on its own loop, in moto (gone at the first poll)."""
    return cloudformation(
        stack,
        "describe-stacks describe-stack-resources describe-stack-events delete-stack "
        "describe-stacks describe-stack-events",
    )


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
