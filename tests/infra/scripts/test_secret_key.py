"""init.sh and SECRET_KEY in Secrets Manager: every operator gets the stack's key, and
-R / --rotate-secret-key rotates it in three steps (stage, promote, drop), against moto."""

from __future__ import annotations

import base64
import re
import shutil
import time

import pytest

from app.config import Settings

from .harness import FIRST_SECRET_KEY, PROFILE, REAL_AWS, World, env_file, option, rendered

pytestmark = [
    pytest.mark.skipif(not REAL_AWS.exists(), reason="AWS CLI (pip package awscli) not installed"),
    pytest.mark.skipif(shutil.which("jq") is None, reason="jq not installed (apt-get install jq)"),
    pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed"),
]
PROMOTED_TAG = "flask-eks-sessions:secret-key-promoted-at"


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
