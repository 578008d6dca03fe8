"""scripts/pipeline.sh apply (the deploy workflow's roll-out step) against moto: init.sh writes the
overlay for the pushed tag, kubectl applies it, the rollout is awaited in the stack's
AppNamespace, and that namespace is handed to the workflow's ops.verify step."""

from __future__ import annotations

from pathlib import Path

from .harness import PROFILE, REGION, World

TAG = "ci-0123456789ab"  # the workflow passes ci- and the commit's first 12 hex digits


def test_apply_rolls_out_and_hands_on_the_stacks_app_namespace(world: World) -> None:
    """Real: init.sh, stacks, EKS, ECR and Secrets Manager in moto. Stand-in: kubectl (its
    rollout status answers at once, as the rollout is marked done) and docker. The kubeconfig
    init.sh writes names no namespace, so the rollout must be awaited in the stack's
    AppNamespace, and ops.verify told it (through GitHub's step outputs file)."""
    world.create_stacks(parameters={"AppNamespace": "shop"})
    world.create_cluster()
    Path(world.env["STUB_LOG"] + ".rollout-done").touch()
    outputs = world.tmp / "github-output"
    outputs.write_text("earlier=kept\n")
    run = world.run(
        "scripts/pipeline.sh", "apply", "-p", PROFILE, "-r", REGION, "-t", TAG,
        env={"GITHUB_OUTPUT": str(outputs)},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    cluster_calls = [c["argv"] for c in run.tool("kubectl") if c["argv"][:1] != ["kustomize"]]
    assert cluster_calls == [
        # init.sh: whether a Deployment applied before keeps a replica count (here: none yet).
        ["-n", "shop", "get", "deployment", "message-app", "--ignore-not-found", "-o", "json"],
        ["apply", "-k", f"{world.root}/.deploy/"],
        ["-n", "shop", "rollout", "status", "deployment/message-app", "--timeout=15m"],
    ]
    assert outputs.read_text() == "earlier=kept\nnamespace=shop\n"
