#!/usr/bin/env python3
"""Recording stand-in for aws, kubectl, docker, podman and buildah in tests/infra/scripts/.

The test links this file onto PATH under each tool's name; the name it is called by picks the role.
Every call appends {"tool", "argv", ...} as one JSON line to $STUB_LOG, so the test can assert the
calls, their order and their flags. What the stand-in answers itself is exactly what moto cannot
emulate; everything else goes to the real tool:

- aws: runs the real AWS CLI against moto (in $STUB_AWS_SERVER, tests/stubs/awsfork.py: the CLI
  imported once, a fork of it per call), except that create/update-stack of the main stack get a
  stand-in template (moto skips EKS/ElastiCache in CloudFormation and fails on their attributes),
  and an unchanged update of it is refused as CloudFormation does ("No updates are to be
  performed"). With STUB_MAIN_EVENTS naming a recorded event sequence (tests/fixtures/aws/
  stack-events/), the main stack's next create, update or delete plays it: each describe-stacks
  is one poll, answered with the recorded status of that step, and describe-stack-events of the
  stack and of its nested stacks answer the events recorded up to it (moto creates stacks at once
  and has no nested ones). `cloudformation wait` meanwhile answers as the AWS CLI's waiter would
  over the recording's times (one poll every 30 s, 120 at most: it gives up after an hour). A
  recording that ends ROLLBACK_COMPLETE leaves the stack so, with its events, until deleted.
  Recorded answers where a test needs a region or account moto does not model:
  STUB_AZ_FIXTURE (a describe-availability-zones answer), STUB_CLUSTER_VPC (moto's EKS names no
  VPC; this one is added to describe-cluster), STUB_LB_LEFT=N (the first N polls for the Service's
  load balancer, target group and security group find them still there, as after a Service
  deletion EKS takes a while to clean up).
  Refusals moto never gives: STUB_DENIED ("service command" pairs, separated by ";") answers
  those calls AccessDenied, as for a profile without the permission; STUB_PROTECTED names a
  stack with termination protection (describe-stacks says so, delete-stack is refused as
  CloudFormation refuses it; moto does not enforce it);
  STUB_ECR_INDEX (a JSON file {"index": DIGEST, "children": [DIGEST, ...]}) makes
  batch-delete-image refuse a child while its image index is still there, as ECR does with
  the manifests of a multi-platform or attested push (ImageReferencedByManifestList).
- describe-stacks: moto's answer with list parameters written back as CloudFormation writes them.
- validate-template: moto's real answer (it runs cfn-lint, about two seconds per template) with
  the template's Parameters filled in as CloudFormation lists them (moto's list is empty), kept
  in $STUB_VALIDATE_CACHE by the template's content hash and replayed for the same bytes, so the
  templates are linted once per test session instead of once per deploy.sh run.
- kubectl: `kustomize` runs the real kubectl (offline); `delete -k DIR` builds DIR with the real
  kubectl first (as kubectl does) and then pretends the cluster deleted the objects; with
  STUB_INGRESS_STUCK=1 a delete that includes the Ingress times out as kubectl's does when the
  Ingress keeps its finalizer. `get deployment message-app` answers $STUB_DEPLOYMENT (a file
  of its `-o json`), else nothing (as --ignore-not-found does); `get pods` answers $STUB_PODS
  (the same), else no pod; `auth can-i` answers yes, or no with STUB_KUBECTL_DENIED=1. `rollout
  restart` answers as kubectl does (the test watching $STUB_LOG replaces its local replicas);
  `rollout status` waits, within its --timeout, until the test creates $STUB_LOG.rollout-done.
- docker/podman/buildah: `push` of an ECR image registers the tag in moto (as a real push would);
  `login` records what it read on stdin; with STUB_STAGE_ON_BUILD=SECRET_ARN, `build` first
  stages a new version of that secret (AWSPENDING), as another operator's `init.sh -R` would
  while this one builds.
"""

import ast
import fcntl
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import awsfork

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
    """Ends this call as the real AWS CLI's run of `args` (moto behind AWS_ENDPOINT_URL) ends:
    on this call's streams, with its exit status."""
    sys.exit(awsfork.call(os.environ["STUB_AWS_SERVER"], args, dict(os.environ), os.getcwd()))


def real_run(args: list[str], check: bool = False) -> subprocess.CompletedProcess[str]:
    """The real AWS CLI's run of `args` with its output captured (into files: a pipe could fill
    up), as subprocess.run(capture_output=True, text=True) gives it."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        code = awsfork.call(
            os.environ["STUB_AWS_SERVER"], args, dict(os.environ), os.getcwd(),
            (0, out.fileno(), err.fileno()),
        )  # fmt: skip
        out.seek(0)
        err.seek(0)
        result = subprocess.CompletedProcess(args, code, out.read().decode(), err.read().decode())
    if check:
        result.check_returncode()
    return result


STACK_TYPE = "AWS::CloudFormation::Stack"
# The AWS CLI's CloudFormation waiters (botocore's waiters-2.json): a poll every 30 s, 120 at most.
WAITER_DELAY, WAITER_MAX_ATTEMPTS = 30, 120
WAITERS = {
    "stack-create-complete": ("StackCreateComplete", "CREATE_COMPLETE"),
    "stack-update-complete": ("StackUpdateComplete", "UPDATE_COMPLETE"),
    "stack-delete-complete": ("StackDeleteComplete", "DELETE_COMPLETE"),
}


class Recording:
    """A recorded stack operation of the main stack, played one describe-stacks poll per step.

    State between calls lives next to $STUB_LOG: the main stack's id, the step reached, and
    whether a recording is playing (active) or was played (its events stay readable).
    """

    def __init__(self) -> None:
        self.state_path = Path(os.environ["STUB_LOG"] + ".recording.json")
        self.state = json.loads(self.state_path.read_text()) if self.state_path.exists() else {}

    def save(self) -> None:
        self.state_path.write_text(json.dumps(self.state))

    @property
    def main_id(self) -> str:
        return self.state.get("main_id", "")

    def is_main(self, stack: str | None) -> bool:
        """The main stack named by its name or by its id (arn:...:stack/NAME/ID)."""
        main = os.environ["STUB_MAIN_STACK"]
        if not stack:
            return False
        return stack in (main, self.main_id) or (
            stack.startswith("arn:") and (stack.split("/")[1] == main)
        )

    def nested_id(self, logical: str) -> str:
        region, main = os.environ["STUB_REGION"], os.environ["STUB_MAIN_STACK"]
        name = f"{main}-{logical}-STUB"
        return f"arn:aws:cloudformation:{region}:123456789012:stack/{name}/{logical.lower()}"

    def start(self, main_id: str) -> None:
        path = os.environ.get("STUB_MAIN_EVENTS")
        # Without a recording the operation is moto's own, and an earlier recording is over.
        self.state = {"main_id": main_id}
        if path:
            self.state.update(file=path, step=0, active=True)
        self.save()

    def steps(self) -> list[dict[str, Any]]:
        return json.loads(Path(self.state["file"]).read_text())["steps"]

    def loaded(self) -> bool:
        return "file" in self.state

    def poll(self) -> str:
        """The status this describe-stacks sees; moves the recording one step on."""
        steps = self.steps()
        step = min(self.state["step"], len(steps) - 1)
        self.state["step"] = step + 1
        if self.state["step"] >= len(steps):
            self.state["active"] = False
        self.save()
        return steps[step]["status"]

    def events(self, stack: str) -> list[dict[str, str]]:
        """The events of `stack` (the main one or a nested one) recorded so far, newest first."""
        steps = self.steps()
        reached = len(steps) if not self.state.get("active") else self.state["step"]
        main = os.environ["STUB_MAIN_STACK"]
        out = []
        for number, step in enumerate(steps[: max(reached, 1)]):
            for index, recorded in enumerate(step["events"]):
                owner = recorded.get("stack", "")
                stack_id = self.nested_id(owner) if owner else self.main_id
                if stack not in (stack_id, main if not owner else stack_id):
                    continue
                logical = recorded["resource"].replace("{stack}", main)
                physical = recorded.get("physical", "")
                if recorded["type"] == STACK_TYPE and logical == "{self}":
                    # A nested stack's own events name it by its stack name, as CloudFormation's do.
                    logical, physical = stack_id.split("/")[1], stack_id
                elif recorded["type"] == STACK_TYPE:
                    physical = stack_id if logical == main else self.nested_id(logical)
                seconds = step.get("at", 30 * number)
                out.append(
                    {
                        "StackId": stack_id,
                        "EventId": f"{number}-{index}-{owner or main}-{logical}",
                        "StackName": stack_id.split("/")[1],
                        "LogicalResourceId": logical,
                        "PhysicalResourceId": physical,
                        "ResourceType": recorded["type"],
                        "Timestamp": time.strftime(
                            "%Y-%m-%dT%H:%M:%S", time.gmtime(1796551200 + seconds)
                        )
                        + f".{index:03d}000+00:00",
                        "ResourceStatus": recorded["status"],
                        **(
                            {"ResourceStatusReason": recorded["reason"]}
                            if "reason" in recorded
                            else {}
                        ),
                    }
                )
        return sorted(out, key=lambda e: e["Timestamp"], reverse=True)

    def wait(self, waiter: str) -> None:
        """What `aws cloudformation wait <waiter>` answers over the rest of the recording."""
        name, success = WAITERS[waiter]
        steps = self.steps()[self.state["step"] :]
        start = steps[0].get("at", 0) if steps else 0
        self.state["step"] += len(steps)
        self.state["active"] = False
        self.save()
        status = steps[0]["status"] if steps else success
        for attempt in range(WAITER_MAX_ATTEMPTS):
            at = start + attempt * WAITER_DELAY
            status = [s["status"] for s in steps if s.get("at", 0) <= at][-1]
            if status == success:
                sys.exit(0)
            if not status.endswith("_IN_PROGRESS"):
                sys.stderr.write(
                    f"\nWaiter {name} failed: Waiter encountered a terminal failure state: For "
                    f'expression "Stacks[].StackStatus" we matched expected path: "{status}" '
                    "at least once\n"
                )
                sys.exit(255)
        sys.stderr.write(f"\nWaiter {name} failed: Max attempts exceeded\n")
        sys.exit(255)


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
    out = real_run(args)
    if out.returncode != 0:
        sys.stderr.write(out.stderr)
        sys.exit(out.returncode)
    return json.loads(out.stdout)


def describe_stacks_as_cloudformation(args: list[str]) -> None:
    """The real describe-stacks answer with parameter values as CloudFormation writes them
    (see as_cloudformation)."""
    answer = real_answer(args)
    for stack in answer.get("Stacks", []):
        if stack["StackName"] == os.environ.get("STUB_PROTECTED"):
            stack["EnableTerminationProtection"] = True
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
    out = real_run(
        ["--profile", option("--profile") or "", "--region", option("--region") or "",
         "cloudformation", "describe-stacks", "--stack-name", stack, "--output", "json"],
        check=True,
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


def template_parameters(template: Path) -> dict[str, Any] | None:
    """The template's Parameters section ({} for none), or None when it is not YAML.

    CloudFormation's short-form functions (!Ref, !Sub, ...) are read as nothing: the Parameters
    section holds none. cfn-lint's decoder would read them too, but importing it takes ~0.8 s in
    this fresh process, paid at each template's first validation in a run; yaml is imported here
    only, as this file starts for every aws and kubectl call. Both read every template's
    parameters alike: tests/infra/scripts/test_standin.py."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    try:
        decoded = yaml.load(template.read_bytes(), Loader)  # noqa: S506 - a SafeLoader
    except (yaml.YAMLError, OSError):  # not YAML (undecodable bytes included), or unreadable
        return None
    return (decoded.get("Parameters") or {}) if isinstance(decoded, dict) else None


def with_template_parameters(answer: str, template: Path) -> str:
    """moto's validate-template answer with the template's Parameters, which CloudFormation lists
    and moto leaves empty (deploy.sh reads main.yaml's parameter names from it)."""
    parsed = json.loads(answer)
    parameters = template_parameters(template)
    if parsed.get("Parameters") or parameters is None:
        return answer
    parsed["Parameters"] = [
        {"ParameterKey": key, "NoEcho": _cfn_text(spec.get("NoEcho", False)).lower() == "true"}
        | ({"DefaultValue": _cfn_text(spec["Default"])} if "Default" in spec else {})
        for key, spec in parameters.items()
    ]
    return json.dumps(parsed, indent=4) + "\n"


def _cfn_text(value: Any) -> str:
    """A template's scalar as CloudFormation answers it: YAML's booleans as "true" and "false"
    (so ``NoEcho: "false"`` and ``NoEcho: false`` read alike), anything else as written."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def validate_template_once(args: list[str]) -> None:
    """Replays moto's answer for a template already validated with the same content. moto lints
    every template for us-east-1 whatever the region (moto/cloudformation/utils.py,
    validate_template_cfn_lint), so its answer depends on the bytes alone. The first caller of a
    template computes it under a lock; the others (other script tests, xdist's other worker)
    wait for it instead of linting the same bytes again."""
    cache_dir = os.environ.get("STUB_VALIDATE_CACHE")
    body = option("--template-body") or ""
    if not cache_dir or not body.startswith("file://"):
        return
    digest = hashlib.sha256(Path(body[len("file://") :]).read_bytes())
    entry = Path(cache_dir) / f"{digest.hexdigest()}.json"
    with open(entry.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not entry.exists():
            out = real_run(args)
            stdout = out.stdout
            if out.returncode == 0:
                stdout = with_template_parameters(stdout, Path(body[len("file://") :]))
            answer = {"code": out.returncode, "stdout": stdout, "stderr": out.stderr}
            # Written whole, then renamed: a reader that takes no lock never sees half an answer.
            partial = entry.with_suffix(f".{os.getpid()}.tmp")
            partial.write_text(json.dumps(answer))
            partial.replace(entry)
    answer = json.loads(entry.read_text())
    sys.stdout.write(answer["stdout"])
    sys.stderr.write(answer["stderr"])
    sys.exit(answer["code"])


def refused(command: str, code: str, message: str) -> None:
    """Ends this call as the AWS CLI ends one the service refused."""
    operation = "".join(part.title() for part in command.split("-"))
    sys.stderr.write(
        f"\nAn error occurred ({code}) when calling the {operation} operation: {message}\n"
    )
    sys.exit(254)


def refusals() -> None:
    """The refusals of STUB_DENIED and STUB_PROTECTED; returns when the call is not refused."""
    for pair in filter(None, os.environ.get("STUB_DENIED", "").split(";")):
        service, command = pair.split()
        if service in ARGV and command in ARGV:
            refused(command, "AccessDenied", f"not authorized to {service}:{command}")
    protected = os.environ.get("STUB_PROTECTED")
    if (
        protected
        and "delete-stack" in ARGV
        and option("--stack-name") in (protected, stack_id_of(protected, ""))
    ):
        refused(
            "delete-stack", "ValidationError",
            f"Stack [{protected}] cannot be deleted while TerminationProtection is enabled",
        )  # fmt: skip


def images_behind_an_index() -> None:
    """batch-delete-image under STUB_ECR_INDEX: the children of an index that was there when
    the call began are refused (moto knows no image indexes); the rest go to moto."""
    state_path = Path(os.environ["STUB_ECR_INDEX"])
    state = json.loads(state_path.read_text())
    ids = json.loads(option("--image-ids") or "[]")
    refused_ids = [i for i in ids if state["index"] and i["imageDigest"] in state["children"]]
    if any(i["imageDigest"] == state["index"] for i in ids):
        state["index"] = None
        state_path.write_text(json.dumps(state))
    answer: dict[str, Any] = {"imageIds": [], "failures": []}
    rest = [i for i in ids if i not in refused_ids]
    if rest:
        args = list(ARGV)
        args[args.index("--image-ids") + 1] = json.dumps(rest)
        answer = real_answer(args)
    answer["failures"] = answer.get("failures", []) + [
        {"imageId": i, "failureCode": "ImageReferencedByManifestList",
         "failureReason": "Requested image referenced by manifest list"}
        for i in refused_ids
    ]  # fmt: skip
    print(json.dumps(answer))
    sys.exit(0)


def recorded_answers() -> None:
    """Answers the test asked for instead of moto's (recorded, or emulated where moto has no
    such behaviour); returns when it asked for none."""
    refusals()
    if "batch-delete-image" in ARGV and os.environ.get("STUB_ECR_INDEX"):
        images_behind_an_index()
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
    recording = Recording()
    deploys_main = (option("--template-body") or "").endswith("/cfn/main.yaml") and stack
    if deploys_main and stack != main:
        sys.exit(f"stand-in aws: main.yaml deployed as {stack!r}, the test expects {main!r}")
    nested = recording.loaded() and stack and "-STUB/" in stack
    if "cloudformation" not in ARGV or not (recording.is_main(stack) or nested):
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
    rolled_back = Path(os.environ["STUB_LOG"] + ".main-rolled-back")
    if command in ("create-stack", "update-stack", "delete-stack"):
        if command == "delete-stack":
            rolled_back.unlink(missing_ok=True)
        # Deleted by name, the id must be read while the stack still exists.
        known = stack_id_of(stack or "", "") if command == "delete-stack" else ""
        out = real_run(args)
        sys.stdout.write(out.stdout)
        sys.stderr.write(out.stderr)
        if out.returncode == 0:
            recording.start(known or stack_id_of(stack or "", out.stdout))
        sys.exit(out.returncode)
    if command == "wait" and recording.state.get("active"):
        recording.wait(ARGV[ARGV.index("wait") + 1])
    if command == "describe-stack-events" and recording.loaded():
        print(json.dumps({"StackEvents": recording.events(stack or "")}))
        sys.exit(0)
    if command == "describe-stacks" and recording.state.get("active"):
        status = recording.poll()
        if status == "ROLLBACK_COMPLETE":
            rolled_back.touch()
        answer = {"Stacks": [{"StackId": recording.main_id, "StackName": main}]}
        if not status.startswith("DELETE") and not rolled_back.exists():
            answer = real_answer(args)
        answer["Stacks"][0]["StackStatus"] = status
        print(json.dumps(answer))
        sys.exit(0)
    # A state moto cannot reach (UPDATE_ROLLBACK_FAILED, say), given by the test.
    forced = os.environ.get("STUB_MAIN_STATUS")
    if forced and command == "describe-stacks":
        answer = real_answer(args)
        answer["Stacks"][0]["StackStatus"] = forced
        print(json.dumps(answer))
        sys.exit(0)
    # After a failed creation the stack stays ROLLBACK_COMPLETE until someone deletes it.
    if rolled_back.exists() and command == "describe-stacks":
        status = {"StackId": recording.main_id, "StackName": main}
        print(json.dumps({"Stacks": [{**status, "StackStatus": "ROLLBACK_COMPLETE"}]}))
        sys.exit(0)
    if command == "describe-stacks":
        describe_stacks_as_cloudformation(args)
    real_aws(args)


def stack_id_of(stack: str, answer: str) -> str:
    """The main stack's id: given as the stack, or in create/update-stack's answer (text or JSON);
    deleted by name, as moto knows it."""
    if stack.startswith("arn:"):
        return stack
    if answer.strip().startswith("arn:"):
        return answer.strip()
    if answer.strip().startswith("{"):
        return json.loads(answer)["StackId"]
    out = real_run(
        ["--profile", option("--profile") or "", "--region", option("--region") or "",
         "cloudformation", "describe-stacks", "--stack-name", stack,
         "--query", "Stacks[0].StackId", "--output", "text"],
    )  # fmt: skip
    return out.stdout.strip() if out.returncode == 0 else ""


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
    if "can-i" in ARGV:
        # STUB_KUBECTL_DENIED=1: RBAC says no (kubectl prints it and exits 1).
        denied = os.environ.get("STUB_KUBECTL_DENIED") == "1"
        print("no" if denied else "yes")
        sys.exit(1 if denied else 0)
    at = ARGV.index("get") + 1 if "get" in ARGV else len(ARGV)
    if ARGV[at : at + 2] == ["deployment", "message-app"]:
        # STUB_DEPLOYMENT: the Deployment as `-o json` shows it; else there is none.
        path = os.environ.get("STUB_DEPLOYMENT")
        if path:
            print(Path(path).read_text())
        return
    if ARGV[at : at + 1] == ["pods"]:
        # STUB_PODS: the pods as `-o json` lists them; else there are none.
        path = os.environ.get("STUB_PODS")
        print(Path(path).read_text() if path else '{"kind": "List", "items": []}')
        return
    if "delete" in ARGV and "-k" in ARGV:
        built = subprocess.run(
            [real, "kustomize", option("-k") or ""], check=True, capture_output=True, text=True
        ).stdout
        if os.environ.get("STUB_INGRESS_STUCK") == "1" and "\nkind: Ingress\n" in built:
            ingress_stuck()
        print('service "message-app" deleted')
    elif "delete" in ARGV and os.environ.get("STUB_INGRESS_STUCK") == "1":
        kinds = next(a for a in ARGV[ARGV.index("delete") + 1 :] if not a.startswith("-"))
        if "ingress" in kinds.split(","):
            ingress_stuck()


def ingress_stuck() -> None:
    """STUB_INGRESS_STUCK=1: the Ingress keeps its finalizer (no controller lifts it, as when its
    IngressClass was deleted first: kubernetes-sigs/aws-load-balancer-controller#4341). A delete
    --wait that includes it fails at its --timeout as kubectl does; without one kubectl would
    wait 168 hours (its default), which the stand-in refuses to play."""
    timeout = next((a.split("=", 1)[1] for a in ARGV if a.startswith("--timeout=")), "0s")
    if timeout in ("0", "0s"):
        sys.exit("stand-in kubectl: delete without --timeout: kubectl would wait up to 168 h")
    print('ingress.networking.k8s.io "message-app" deleted')
    sys.exit("error: timed out waiting for the condition on ingresses/message-app")


def rollout() -> None:
    """`rollout restart` and `rollout status` of a Deployment, answered as kubectl answers them."""
    target = next(a for a in ARGV if a.startswith("deployment/"))
    if "restart" in ARGV:
        print(f"deployment.apps/{target.split('/', 1)[1]} restarted")
        sys.exit(0)
    timeout = next((a.split("=", 1)[1] for a in ARGV if a.startswith("--timeout=")), "0s")
    deadline = time.monotonic() + seconds(timeout)
    done = Path(os.environ["STUB_LOG"] + ".rollout-done")
    while not done.exists():
        if time.monotonic() > deadline:
            sys.exit(f"error: timed out waiting for the condition on {target}")
        time.sleep(0.1)
    print(f'deployment "{target.split("/", 1)[1]}" successfully rolled out')
    sys.exit(0)


def seconds(duration: str) -> float:
    """A kubectl duration of one unit (600s, 15m, 1h; a bare number is seconds) in seconds."""
    units = {"s": 1, "m": 60, "h": 3600}
    if duration[-1:] in units:
        return float(duration[:-1] or 0) * units[duration[-1]]
    return float(duration or 0)


def builder() -> None:
    """Records the call; a push to ECR leaves the tag in moto, like a real push."""
    stdin = sys.stdin.read() if "login" in ARGV else None
    record(stdin=stdin)
    secret = os.environ.get("STUB_STAGE_ON_BUILD")
    if "build" in ARGV and secret:
        real_run(
            ["--profile", os.environ["STUB_PROFILE"], "--region", os.environ["STUB_REGION"],
             "secretsmanager", "put-secret-value", "--secret-id", secret,
             "--secret-string", "AnotherOperatorsKey" * 3, "--version-stages", "AWSPENDING"],
            check=True,
        )  # fmt: skip
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
    pushed = real_run(
        [
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
        ]
    )
    sys.stderr.write(pushed.stderr)
    pushed.check_returncode()


if __name__ == "__main__":
    {"aws": aws, "kubectl": kubectl}.get(TOOL, builder)()
