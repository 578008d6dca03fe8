#!/usr/bin/env python3
"""Recording stand-in for aws, kubectl, docker, podman and buildah in tests/infra/scripts/.

The test links this file onto PATH under each tool's name; the name it is called by picks the role.
Every call appends {"tool", "argv", ...} as one JSON line to $STUB_LOG, so the test can assert the
calls, their order and their flags. What the stand-in answers itself is exactly what moto cannot
emulate; everything else goes to the real tool:

- aws: runs the real AWS CLI against moto, except that create/update-stack of the main stack get a
  stand-in template (moto skips EKS/ElastiCache in CloudFormation and fails on their attributes),
  an unchanged update of it is refused as CloudFormation does ("No updates are to be performed"),
  and with STUB_MAIN_FAILS=1 the main stack's waiter fails; from then on, until the stack is
  deleted, the stack answers ROLLBACK_COMPLETE and canned events, as CloudFormation would.
  Recorded answers where a test needs a region or account moto does not model:
  STUB_AZ_FIXTURE (a describe-availability-zones answer), STUB_CLUSTER_VPC (moto's EKS names no
  VPC; this one is added to describe-cluster), STUB_LB_LEFT=N (the first N polls for the Service's
  load balancer, target group and security group find them still there, as after a Service
  deletion EKS takes a while to clean up).
- describe-stacks: moto's answer with list parameters written back as CloudFormation writes them.
- validate-template: moto's real answer (it runs cfn-lint, about a second per template) with the
  template's Parameters filled in as CloudFormation lists them (moto's list is empty), kept in
  $STUB_VALIDATE_CACHE by the template's content hash and the region and replayed for the same
  bytes, so the templates are linted once per test session instead of once per deploy.sh run.
- kubectl: `kustomize` runs the real kubectl (offline); `delete -k DIR` builds DIR with the real
  kubectl first (as kubectl does) and then pretends the cluster deleted the objects. `rollout
  restart` answers as kubectl does (the test watching $STUB_LOG replaces its local replicas);
  `rollout status` waits, within its --timeout, until the test creates $STUB_LOG.rollout-done.
- docker/podman/buildah: `push` of an ECR image registers the tag in moto (as a real push would);
  `login` records what it read on stdin.
"""

import ast
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

TOOL = Path(sys.argv[0]).name
ARGV = sys.argv[1:]


def record(**extra: object) -> None:
    """Appends this call to the shared log; O_APPEND keeps lines whole when calls overlap."""
    line = json.dumps({"tool": TOOL, "argv": ARGV, "time": time.time(), **extra}) + "\n"
    with open(os.environ["STUB_LOG"], "a", encoding="utf-8") as log:
        log.write(line)


def option(name: str) -> str | None:
    """The value following `name` in argv, if any."""
    if name in ARGV[:-1]:
        return ARGV[ARGV.index(name) + 1]
    return None


def real_aws(args: list[str]) -> None:
    """Replaces this process with the real AWS CLI (moto behind AWS_ENDPOINT_URL)."""
    os.execv(os.environ["REAL_AWS"], [os.environ["REAL_AWS"], *args])  # noqa: S606


def canned_main_events(stack: str) -> dict[str, list[dict[str, str]]]:
    """Events like CloudFormation's for a nested-stack failure, newest first.

    The last one is an older operation's failure that the script must not show again.
    """
    main_id = os.environ["STUB_MAIN_STACK_ID"]
    nested_id = os.environ["STUB_NESTED_STACK_ID"]

    def event(stack_id: str, logical: str, rtype: str, physical: str, status: str, reason: str):
        return {
            "StackId": stack_id,
            "EventId": f"{logical}-{status}",
            "StackName": stack_id.split("/")[1],
            "LogicalResourceId": logical,
            "PhysicalResourceId": physical,
            "ResourceType": rtype,
            "Timestamp": "2026-11-21T10:00:00Z",
            "ResourceStatus": status,
            "ResourceStatusReason": reason,
        }

    stack_type = "AWS::CloudFormation::Stack"
    if stack == nested_id:
        return {
            "StackEvents": [
                event(
                    nested_id,
                    "ReplicationGroup",
                    "AWS::ElastiCache::ReplicationGroup",
                    "",
                    "CREATE_FAILED",
                    "STUB-CACHE-QUOTA: cache node quota exceeded",
                ),
                event(
                    nested_id,
                    "CacheStack",
                    stack_type,
                    nested_id,
                    "CREATE_IN_PROGRESS",
                    "User Initiated",
                ),
            ]
        }
    return {
        "StackEvents": [
            event(main_id, stack, stack_type, main_id, "ROLLBACK_COMPLETE", ""),
            event(
                main_id,
                "CacheStack",
                stack_type,
                nested_id,
                "CREATE_FAILED",
                "Embedded stack was not successfully created: The following resource(s) "
                "failed to create: [ReplicationGroup].",
            ),
            event(main_id, stack, stack_type, main_id, "CREATE_IN_PROGRESS", "User Initiated"),
            event(main_id, "OldThing", "AWS::EC2::VPC", "", "UPDATE_FAILED", "STUB-OLD-FAILURE"),
        ]
    }


def no_updates_if_unchanged(command: str, template: str) -> None:
    """CloudFormation's answer to an update that changes nothing (moto only gives it when every
    parameter is passed, main.yaml has defaulted ones): same template, flags and parameter values,
    a UsePreviousValue parameter counting as the value the last create/update gave it."""
    state = Path(os.environ["STUB_LOG"] + ".main-stack.json")
    last = json.loads(state.read_text()) if state.exists() else None
    given = option("--parameters") or "[]"
    previous = last[2] if last else {}
    values = {
        p["ParameterKey"]: previous.get(p["ParameterKey"])
        if p.get("UsePreviousValue")
        else p["ParameterValue"]
        for p in json.loads(given)
    }
    flags = [a for a in ARGV if a not in ("create-stack", "update-stack", given)]
    request = [template, flags, {k: v for k, v in values.items() if v is not None}]
    if command == "update-stack" and last == request:
        sys.stderr.write(
            "\nAn error occurred (ValidationError) when calling the UpdateStack operation: "
            "No updates are to be performed.\n"
        )
        sys.exit(255)
    state.write_text(json.dumps(request))


def load_balancer_leftovers(command: str) -> None:
    """With STUB_LB_LEFT=N, the first N polls find what EKS made for the Service still there."""
    vpc = os.environ["STUB_CLUSTER_VPC"]
    polls = Path(os.environ["STUB_LOG"] + ".lb-polls")
    done = int(polls.read_text()) if polls.exists() else 0
    if done >= int(os.environ["STUB_LB_LEFT"]):
        return
    if command == "describe-security-groups":
        polls.write_text(str(done + 1))  # the last call of one poll
    answers = {
        "describe-load-balancers": {
            "LoadBalancers": [
                {
                    "LoadBalancerName": "k8s-default-messagea-0123456789",
                    "VpcId": vpc,
                    "Type": "network",
                }
            ]
        },
        "describe-target-groups": {
            "TargetGroups": [{"TargetGroupName": "k8s-default-messagea-abcdef0123", "VpcId": vpc}]
        },
        "describe-security-groups": {
            "SecurityGroups": [
                {
                    "GroupId": "sg-0lb0000000000000",
                    "VpcId": vpc,
                    "Tags": [
                        {"Key": "service.eks.amazonaws.com/stack", "Value": "default/message-app"}
                    ],
                }
            ]
        },
    }
    print(json.dumps(answers[command]))
    sys.exit(0)


def real_answer(args: list[str]) -> dict[str, Any]:
    """The real call's JSON answer, to be amended; a failed call ends here as it failed."""
    out = subprocess.run(
        [os.environ["REAL_AWS"], *args], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        sys.stderr.write(out.stderr)
        sys.exit(out.returncode)
    return json.loads(out.stdout)


def describe_stacks_as_cloudformation(args: list[str]) -> None:
    """The real describe-stacks answer with parameter values as CloudFormation writes them
    (see as_cloudformation)."""
    answer = real_answer(args)
    for stack in answer.get("Stacks", []):
        for parameter in stack.get("Parameters", []):
            parameter["ParameterValue"] = as_cloudformation(parameter.get("ParameterValue", ""))
    print(json.dumps(answer))
    sys.exit(0)


def previous_values_resolved(args: list[str], stack: str) -> list[str]:
    """args with each UsePreviousValue parameter given the stack's current value instead, as
    CloudFormation resolves it: moto knows only the values a create/update passed explicitly and
    fails (HTTP 500) on a parameter that took its default."""
    given = option("--parameters")
    if not given or "UsePreviousValue" not in given:
        return args
    out = subprocess.run(
        [os.environ["REAL_AWS"], "--profile", option("--profile") or "", "--region",
         option("--region") or "", "cloudformation", "describe-stacks", "--stack-name", stack,
         "--output", "json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    current = {
        p["ParameterKey"]: p.get("ParameterValue", "")
        for p in json.loads(out.stdout)["Stacks"][0].get("Parameters", [])
    }
    resolved = [
        {
            "ParameterKey": p["ParameterKey"],
            "ParameterValue": as_cloudformation(current[p["ParameterKey"]]),
        }
        if p.get("UsePreviousValue")
        else p
        for p in json.loads(given)
    ]
    args = list(args)
    args[args.index(given)] = json.dumps(resolved)
    return args


def as_cloudformation(value: str) -> str:
    """A parameter value as CloudFormation writes it: moto answers a CommaDelimitedList as a
    Python list ("['a', 'b']"), CloudFormation as the string it was given ("a,b")."""
    if value.startswith("[") and value.endswith("]"):
        return ",".join(ast.literal_eval(value))
    return value


def with_template_parameters(answer: str, template: Path) -> str:
    """moto's validate-template answer with the template's Parameters, which CloudFormation lists
    and moto leaves empty (deploy.sh reads main.yaml's parameter names from it)."""
    from cfnlint.decode import decode

    parsed = json.loads(answer)
    decoded, _ = decode(str(template))
    if parsed.get("Parameters") or decoded is None:
        return answer
    parsed["Parameters"] = [
        {"ParameterKey": key, "NoEcho": bool(spec.get("NoEcho", False))}
        | ({"DefaultValue": str(spec["Default"])} if "Default" in spec else {})
        for key, spec in (decoded.get("Parameters") or {}).items()
    ]
    return json.dumps(parsed, indent=4) + "\n"


def validate_template_once(args: list[str]) -> None:
    """Replays moto's answer for a template already validated with the same content and region."""
    cache_dir = os.environ.get("STUB_VALIDATE_CACHE")
    body = option("--template-body") or ""
    if not cache_dir or not body.startswith("file://"):
        return
    digest = hashlib.sha256(Path(body[len("file://") :]).read_bytes())
    digest.update((option("--region") or "").encode())
    entry = Path(cache_dir) / f"{digest.hexdigest()}.json"
    if not entry.exists():
        out = subprocess.run(
            [os.environ["REAL_AWS"], *args], capture_output=True, text=True, check=False
        )
        stdout = out.stdout
        if out.returncode == 0:
            stdout = with_template_parameters(stdout, Path(body[len("file://") :]))
        answer = {"code": out.returncode, "stdout": stdout, "stderr": out.stderr}
        # Written whole, then renamed: a concurrent reader never sees half an answer.
        partial = entry.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(json.dumps(answer))
        partial.replace(entry)
    answer = json.loads(entry.read_text())
    sys.stdout.write(answer["stdout"])
    sys.stderr.write(answer["stderr"])
    sys.exit(answer["code"])


def recorded_answers() -> None:
    """Answers from a recording where the test asks for one; returns when it does not."""
    if "validate-template" in ARGV:
        validate_template_once(ARGV)
    fixture = os.environ.get("STUB_AZ_FIXTURE")
    if "describe-availability-zones" in ARGV and fixture:
        print(Path(fixture).read_text())
        sys.exit(0)
    if "describe-cluster" in ARGV and os.environ.get("STUB_CLUSTER_VPC"):
        answer = real_answer(ARGV)
        answer["cluster"]["resourcesVpcConfig"]["vpcId"] = os.environ["STUB_CLUSTER_VPC"]
        print(json.dumps(answer))
        sys.exit(0)
    polls = ("describe-load-balancers", "describe-target-groups", "describe-security-groups")
    command = next((a for a in ARGV if a in polls), None)
    if command and os.environ.get("STUB_LB_LEFT"):
        load_balancer_leftovers(command)


def aws() -> None:
    """Records the call; answers the main stack where moto cannot, else runs the real CLI."""
    # JSON payloads passed as files (delete-objects) vanish with the script's temporary directory.
    files = {
        a: Path(a[7:]).read_text() for a in ARGV if a.startswith("file://") and a.endswith(".json")
    }
    record(files=files)
    recorded_answers()
    stack = option("--stack-name")
    main = os.environ["STUB_MAIN_STACK"]
    deploys_main = (option("--template-body") or "").endswith("/cfn/main.yaml") and stack
    if deploys_main and stack != main:
        sys.exit(f"stand-in aws: main.yaml deployed as {stack!r}, the test expects {main!r}")
    if "cloudformation" not in ARGV or stack not in (main, os.environ["STUB_NESTED_STACK_ID"]):
        if "describe-stacks" in ARGV:
            describe_stacks_as_cloudformation(ARGV)
        real_aws(ARGV)
    command = ARGV[ARGV.index("cloudformation") + 1]
    args = list(ARGV)
    if command in ("create-stack", "update-stack"):
        body = option("--template-body") or ""
        if not body.endswith("/cfn/main.yaml"):
            sys.exit(f"stand-in aws: main stack deployed from {body!r}, not cfn/main.yaml")
        args[args.index(body)] = "file://" + os.environ["STUB_MAIN_TEMPLATE"]
        no_updates_if_unchanged(command, Path(body[len("file://") :]).read_text())
        if command == "update-stack":
            args = previous_values_resolved(args, stack)
    # After a failed creation the stack stays ROLLBACK_COMPLETE until someone deletes it.
    rolled_back = Path(os.environ["STUB_LOG"] + ".main-rolled-back")
    if os.environ.get("STUB_MAIN_FAILS") == "1" and command == "wait":
        rolled_back.touch()
        sys.stderr.write(
            "\nWaiter StackCreateComplete failed: Waiter encountered a terminal failure "
            'state: For expression "Stacks[].StackStatus" we matched expected path: '
            '"ROLLBACK_COMPLETE" at least once\n'
        )
        sys.exit(255)
    if rolled_back.exists():
        if command == "describe-stacks":
            status = {"StackId": os.environ["STUB_MAIN_STACK_ID"], "StackName": main}
            print(json.dumps({"Stacks": [{**status, "StackStatus": "ROLLBACK_COMPLETE"}]}))
            sys.exit(0)
        if command == "describe-stack-events":
            print(json.dumps(canned_main_events(stack or "")))
            sys.exit(0)
        if command == "delete-stack":
            rolled_back.unlink()
    if command == "describe-stacks":
        describe_stacks_as_cloudformation(args)
    real_aws(args)


def kubectl() -> None:
    """Records the call; builds kustomizations with the real kubectl, fakes the cluster."""
    kubeconfig = option("--kubeconfig")
    kubeconfig_text = Path(kubeconfig).read_text() if kubeconfig else None
    record(kubeconfig_text=kubeconfig_text)
    real = os.environ["REAL_KUBECTL"]
    if ARGV[:1] == ["kustomize"]:
        os.execv(real, [real, *ARGV])  # noqa: S606
    if os.environ.get("STUB_KUBECTL_FAILS") == "1":
        sys.exit("error: You must be logged in to the server (Unauthorized)")
    if "rollout" in ARGV:
        rollout()
    if "delete" in ARGV and "-k" in ARGV:
        subprocess.run(
            [real, "kustomize", option("-k") or ""], check=True, stdout=subprocess.DEVNULL
        )
        print('service "message-app" deleted')


def rollout() -> None:
    """`rollout restart` and `rollout status` of a Deployment, answered as kubectl answers them."""
    target = next(a for a in ARGV if a.startswith("deployment/"))
    if "restart" in ARGV:
        print(f"deployment.apps/{target.split('/', 1)[1]} restarted")
        sys.exit(0)
    timeout = next((a.split("=", 1)[1] for a in ARGV if a.startswith("--timeout=")), "0s")
    deadline = time.monotonic() + float(timeout.rstrip("s") or 0)
    done = Path(os.environ["STUB_LOG"] + ".rollout-done")
    while not done.exists():
        if time.monotonic() > deadline:
            sys.exit(f"error: timed out waiting for the condition on {target}")
        time.sleep(0.1)
    print(f'deployment "{target.split("/", 1)[1]}" successfully rolled out')
    sys.exit(0)


def builder() -> None:
    """Records the call; a push to ECR leaves the tag in moto, like a real push."""
    stdin = sys.stdin.read() if "login" in ARGV else None
    record(stdin=stdin)
    if "push" not in ARGV:
        return
    image = ARGV[ARGV.index("push") + 1]
    registry, _, rest = image.partition("/")
    if ".dkr.ecr." not in registry:
        return
    repository, _, tag = rest.rpartition(":")
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "size": 2,
            "digest": "sha256:" + "0" * 64,
        },
        "layers": [],
    }
    subprocess.run(
        [
            os.environ["REAL_AWS"],
            "--profile",
            os.environ["STUB_PROFILE"],
            "--region",
            os.environ["STUB_REGION"],
            "ecr",
            "put-image",
            "--repository-name",
            repository,
            "--image-tag",
            tag,
            "--image-manifest",
            json.dumps({**manifest, "annotations": {"tag": tag}}),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )


if __name__ == "__main__":
    {"aws": aws, "kubectl": kubectl}.get(TOOL, builder)()
