"""init.sh and SECRET_KEY in Secrets Manager: every operator gets the stack's key, and
-R / --rotate-secret-key rotates it in three steps (stage, promote, drop), against moto."""

from __future__ import annotations

import base64
import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from app.config import Settings

from .harness import FIRST_SECRET_KEY, PROFILE, REAL_AWS, World, env_file, option, rendered

pytestmark = [
    pytest.mark.skipif(not REAL_AWS.exists(), reason="AWS CLI (pip package awscli) not installed"),
    pytest.mark.skipif(shutil.which("jq") is None, reason="jq not installed (apt-get install jq)"),
    pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed"),
]
PROMOTED_TAG = "flask-eks-sessions:secret-key-promoted-at"
SIGNING = "flask-eks-sessions/secret-key-version"


def stages(world: World) -> dict[str, str]:
    """Staging label -> the value it names, as moto's Secrets Manager holds them."""
    client = world.client("secretsmanager")
    versions = client.list_secret_version_ids(SecretId=world.secret_key_arn)["Versions"]
    return {
        stage: client.get_secret_value(SecretId=world.secret_key_arn, VersionStage=stage)[
            "SecretString"
        ]
        for version in versions
        for stage in version.get("VersionStages", [])
    }


def deployed(world: World) -> tuple[str, tuple[str, ...]]:
    """The key and fallbacks the pods would get: the rendered Secret, read as the app reads it."""
    kinds = rendered(world.root)
    secret = {k: base64.b64decode(v).decode() for k, v in kinds["Secret"]["data"].items()}
    settings = Settings.from_env({**kinds["ConfigMap"]["data"], **secret})
    return settings.secret_key, settings.secret_key_fallbacks


def applied(
    world: World, path: Path, leaving: dict[str, str] | None = None, **status: Any
) -> dict[str, str]:
    """The overlay's Deployment as the cluster shows it once applied, and its pods, written for
    the stand-in kubectl (STUB_DEPLOYMENT, STUB_PODS): rolled out on 3 pods, unless `status`
    says otherwise; with `leaving`, one more pod with those annotations is still terminating."""
    deployment = rendered(world.root)["Deployment"]
    deployment["metadata"]["generation"] = 2
    deployment["spec"]["replicas"] = 3
    rolled_out = {"replicas": 3, "updatedReplicas": 3, "availableReplicas": 3}
    deployment["status"] = {"observedGeneration": 2, **rolled_out, **status}
    path.write_text(json.dumps(deployment))
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    pods = [{"metadata": {"annotations": annotations}}] * 3
    if leaving is not None:
        pods.append(
            {"metadata": {"annotations": leaving, "deletionTimestamp": "2026-12-07T00:00:00Z"}}
        )
    pods_path = path.with_suffix(".pods.json")
    pods_path.write_text(json.dumps({"kind": "List", "items": pods}))
    return {"STUB_DEPLOYMENT": str(path), "STUB_PODS": str(pods_path)}


def test_every_operator_and_run_writes_the_stacks_key_and_a_rotation_takes_three_steps(
    world: World,
) -> None:
    """Real: the stacks, Secrets Manager's versions, staging labels, random password and tags in
    moto; kubectl kustomize. Stand-in: docker."""
    world.create_stacks()
    world.create_cluster()

    # Step 1: a new key, staged; the pods keep signing with the first and accept both.
    one = world.run("init.sh", "-p", PROFILE, "-R")
    assert one.returncode == 0, one.stderr
    new = stages(world)["AWSPENDING"]
    assert re.fullmatch(r"[A-Za-z0-9]{64}", new) and new != FIRST_SECRET_KEY
    assert stages(world) == {"AWSCURRENT": FIRST_SECRET_KEY, "AWSPENDING": new}
    assert deployed(world) == (FIRST_SECRET_KEY, (new,))
    assert "step 1 of 3" in one.stdout
    (put,) = one.aws_calls("secretsmanager", "put-secret-value")
    assert option(put["argv"], "--secret-string").startswith("file://")  # never an argument
    assert new not in one.stdout + one.stderr + str(one.calls)
    # Another operator's machine in between writes the same.
    shutil.rmtree(world.root / ".deploy")
    other = world.run("init.sh", "-p", PROFILE)
    assert other.returncode == 0, other.stderr
    assert deployed(world) == (FIRST_SECRET_KEY, (new,))
    assert "rotation" not in other.stdout

    # Step 2: the new key signs, the first is still accepted.
    two = world.run("init.sh", "-p", PROFILE, "--rotate-secret-key")
    assert two.returncode == 0, two.stderr
    assert stages(world) == {"AWSCURRENT": new, "AWSPREVIOUS": FIRST_SECRET_KEY}
    assert deployed(world) == (new, (FIRST_SECRET_KEY,))
    assert "step 2 of 3" in two.stdout

    # Step 3 within the hour forms rendered under the first key stay valid: refused, unchanged.
    early = world.run("init.sh", "-p", PROFILE, "-R")
    assert early.returncode == 1
    assert "the new SECRET_KEY was promoted 0 minutes ago" in early.stderr
    assert "the old key must stay 60 more minutes" in early.stderr
    assert not early.tool("docker")  # refused before the image is built
    assert stages(world) == {"AWSCURRENT": new, "AWSPREVIOUS": FIRST_SECRET_KEY}
    assert deployed(world) == (new, (FIRST_SECRET_KEY,))

    # An hour later (the promotion's tag moved back, as time would), the first key goes.
    world.client("secretsmanager").tag_resource(
        SecretId=world.secret_key_arn,
        Tags=[{"Key": PROMOTED_TAG, "Value": str(int(time.time()) - 3601)}],
    )
    three = world.run("init.sh", "-p", PROFILE, "-R")
    assert three.returncode == 0, three.stderr
    assert stages(world) == {"AWSCURRENT": new}
    assert deployed(world) == (new, ())
    assert env_file(world.root / ".deploy" / "secrets.env")["SECRET_KEY_FALLBACKS"] == ""
    assert "step 3 of 3" in three.stdout
    for run in (one, other, two, early, three):
        assert FIRST_SECRET_KEY not in run.stdout + run.stderr
        assert new not in run.stdout + run.stderr

    # The next rotation starts over at step 1.
    again = world.run("init.sh", "-p", PROFILE, "-R")
    assert again.returncode == 0, again.stderr
    assert set(stages(world)) == {"AWSCURRENT", "AWSPENDING"}
    assert "step 1 of 3" in again.stdout


def test_a_rotation_step_that_stops_half_way_never_skips_a_step(world: World) -> None:
    """Real: Secrets Manager in moto. Stand-in: a profile refused one call (STUB_DENIED). Before
    (found by review), a step 2 refused the promotion's tag had already moved the labels, and the
    next -R found no tag and dropped the old key at once; a step that stopped after Secrets
    Manager took it, before .deploy/ was written, said nothing, and a rerun of -R took the next
    step before any pod had this one."""
    world.use_cache_mode("replication-group", "iam")  # SECRET_KEY is all init.sh reads
    world.create_stacks()
    world.create_cluster()
    assert world.run("init.sh", "-p", PROFILE, "-R").returncode == 0
    new = stages(world)["AWSPENDING"]

    # Step 2 refused its tag: nothing moved.
    untagged = world.run(
        "init.sh", "-p", PROFILE, "-R", env={"STUB_DENIED": "secretsmanager tag-resource"}
    )
    assert untagged.returncode != 0
    assert stages(world) == {"AWSCURRENT": FIRST_SECRET_KEY, "AWSPENDING": new}

    # Step 2 taken, then the run stopped before .deploy/: said so, with how to go on.
    stopped = world.run(
        "init.sh", "-p", PROFILE, "-R", env={"STUB_DENIED": "secretsmanager get-secret-value"}
    )
    assert stopped.returncode != 0
    assert stages(world) == {"AWSCURRENT": new, "AWSPREVIOUS": FIRST_SECRET_KEY}
    assert (
        "SECRET_KEY rotation step 2 of 3 was taken in Secrets Manager, but .deploy/ was not "
        "written: run this same command again without -R to write it"
    ) in stopped.stderr
    assert world.run("init.sh", "-p", PROFILE).returncode == 0
    assert deployed(world) == (new, (FIRST_SECRET_KEY,))

    # Step 3 with no record of the promotion: the hour counts from now, the old key stays.
    world.client("secretsmanager").untag_resource(
        SecretId=world.secret_key_arn, TagKeys=[PROMOTED_TAG]
    )
    unrecorded = world.run("init.sh", "-p", PROFILE, "-R")
    assert unrecorded.returncode == 1
    assert "no record of when the new SECRET_KEY was promoted" in unrecorded.stderr
    assert "was taken in Secrets Manager" not in unrecorded.stderr
    assert stages(world) == {"AWSCURRENT": new, "AWSPREVIOUS": FIRST_SECRET_KEY}
    again = world.run("init.sh", "-p", PROFILE, "-R")
    assert again.returncode == 1
    assert "the new SECRET_KEY was promoted 0 minutes ago" in again.stderr


def test_each_rotation_step_waits_until_every_pod_has_the_last_one(
    world: World, tmp_path: Path
) -> None:
    """Real: Secrets Manager in moto; kubectl kustomize. Stand-in: the cluster (`kubectl get`
    of the Deployment, the overlay as rendered with a rollout status, and of its pods). Before,
    nothing checked that a step was rolled out before the next -R: step 2 while pods that do not
    accept the new key still served would fail the forms the new pods sign, and step 3 before
    step 2's rollout would drop the key some pods still sign with. The pod template names the
    versions by id (never a key); each refusal changes nothing and builds nothing. Found by
    review: a pod still terminating serves but is not in the Deployment's status, and another
    operator's step taken while this run built its image was taken on unchecked."""
    world.use_cache_mode("replication-group", "iam")  # SECRET_KEY is all init.sh reads
    world.create_stacks()
    world.create_cluster()
    assert world.run("init.sh", "-p", PROFILE).returncode == 0
    before = applied(world, tmp_path / "before.json")
    old_pod = json.loads(Path(before["STUB_DEPLOYMENT"]).read_text())["spec"]["template"]
    assert world.run("init.sh", "-p", PROFILE, "-R", env=before).returncode == 0  # step 1
    new = stages(world)["AWSPENDING"]
    versions = {
        stage: v["VersionId"]
        for v in world.client("secretsmanager").list_secret_version_ids(
            SecretId=world.secret_key_arn
        )["Versions"]
        for stage in v["VersionStages"]
    }
    annotations = rendered(world.root)["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations[SIGNING] == versions["AWSCURRENT"]
    assert annotations["flask-eks-sessions/secret-key-fallback-versions"] == versions["AWSPENDING"]
    assert new not in json.dumps(annotations) and FIRST_SECRET_KEY not in json.dumps(annotations)
    staged = {"AWSCURRENT": FIRST_SECRET_KEY, "AWSPENDING": new}

    def refused(env: dict[str, str], says: str, stays: dict[str, str]) -> None:
        run = world.run("init.sh", "-p", PROFILE, "-R", env=env)
        assert run.returncode == 1, run.stdout
        assert says in run.stderr
        assert "(nothing was changed)" in run.stderr
        assert not run.tool("docker")
        assert stages(world) == stays

    # Step 2 while the pods still run the overlay from before step 1.
    refused(
        before,
        "not every pod of deployment default/message-app accepts the staged key (step 1's "
        "overlay) yet: run this same command without -R (it writes the overlay for the step "
        "taken), kubectl apply -k .deploy/",
        staged,
    )
    # Applied from an overlay written before init.sh named the versions: told apart.
    unnamed = json.loads(Path(before["STUB_DEPLOYMENT"]).read_text())
    del unnamed["spec"]["template"]["metadata"]["annotations"][
        "flask-eks-sessions/secret-key-version"
    ]
    (tmp_path / "unnamed.json").write_text(json.dumps(unnamed))
    refused(
        {**before, "STUB_DEPLOYMENT": str(tmp_path / "unnamed.json")},
        "was applied from an overlay that does not name its SECRET_KEY versions",
        staged,
    )
    # Step 1's overlay applied, its rollout not finished (as kubectl rollout status sees it).
    step_one = tmp_path / "step-one.json"
    for status, says in (
        ({"observedGeneration": 1}, "a change, an apply or the HPA scaling it, is not picked up"),
        ({"updatedReplicas": 1, "replicas": 4}, "pods updated: 1 of 3"),
        ({"replicas": 4}, "old pods still running: 1"),
        ({"availableReplicas": 2}, "updated pods available: 2 of 3"),
        (
            {"conditions": [{"type": "Progressing", "reason": "ProgressDeadlineExceeded"}]},
            "its rollout failed, past its progress deadline",
        ),
    ):
        refused(
            applied(world, step_one, **status),
            f"deployment default/message-app has not finished rolling out ({says}",
            staged,
        )
    paused = json.loads(step_one.read_text())
    paused["spec"]["paused"] = True
    step_one.write_text(json.dumps(paused))
    refused(
        {"STUB_DEPLOYMENT": str(step_one)},
        "(it is paused: kubectl -n default rollout resume deployment/message-app)",
        staged,
    )
    # Rolled out, but a pod of the earlier overlay is still terminating (and still serving).
    refused(
        applied(world, step_one, leaving=old_pod["metadata"]["annotations"]),
        "pods of an earlier overlay of deployment default/message-app are still running or "
        "terminating: 1",
        staged,
    )
    # A cluster kubectl cannot read: the step cannot be seen, so it is not taken.
    refused({"STUB_KUBECTL_FAILS": "1"}, "could not read deployment default/message-app", staged)

    two = world.run("init.sh", "-p", PROFILE, "-R", env=applied(world, step_one))
    assert two.returncode == 0, two.stderr
    # The pods listed are the Deployment's, by its selector.
    listed = [option(c["argv"], "-l") or "" for c in two.tool("kubectl") if "pods" in c["argv"]]
    selector = {"app.kubernetes.io/name=message-app", "app.kubernetes.io/instance=message-app"}
    assert listed and all(set(labels.split(",")) == selector for labels in listed)
    promoted = {"AWSCURRENT": new, "AWSPREVIOUS": FIRST_SECRET_KEY}
    assert stages(world) == promoted

    # An hour later, step 3 while the pods still run step 1's overlay (signing with the old key).
    world.client("secretsmanager").tag_resource(
        SecretId=world.secret_key_arn,
        Tags=[{"Key": PROMOTED_TAG, "Value": str(int(time.time()) - 3601)}],
    )
    refused(
        applied(world, tmp_path / "stale.json") | {"STUB_DEPLOYMENT": str(step_one)},
        "not every pod of deployment default/message-app signs with the new key (step 2's "
        "overlay) yet",
        promoted,
    )
    step_two = applied(world, tmp_path / "step-two.json")
    three = world.run("init.sh", "-p", PROFILE, "-R", env=step_two)
    assert three.returncode == 0, three.stderr
    assert stages(world) == {"AWSCURRENT": new}

    # Another operator stages step 1 while this run builds its image: checked again, not taken.
    raced = world.run(
        "init.sh", "-p", PROFILE, "-t", "raced", "-R",
        env={**step_two, "STUB_STAGE_ON_BUILD": world.secret_key_arn},
    )  # fmt: skip
    assert raced.returncode == 1, raced.stdout
    assert [c["argv"][0] for c in raced.tool("docker")] == ["login", "build", "push"]
    assert "not every pod of deployment default/message-app accepts the staged key" in raced.stderr
    assert stages(world) == {"AWSCURRENT": new, "AWSPENDING": "AnotherOperatorsKey" * 3}
