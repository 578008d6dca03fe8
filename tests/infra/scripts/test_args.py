"""Every script's option parsing and prerequisite checks: nothing but parsing and `command -v`
runs, so no stand-in is ever called (one shared World)."""

from __future__ import annotations

import pytest

from .harness import (
    PROFILE,
    SCRIPTS,
    World,
    assert_usage_refused,
)


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
    shared_world: World, script: str, args: tuple[str, ...], code: int, message: str
) -> None:
    """Real: the scripts' argument parsing. No AWS, kubectl or builder call may happen."""
    run = shared_world.run(script, *args)
    assert run.returncode == code
    assert f"{script}: {message}" in run.stderr
    assert "Usage:" in run.stderr
    assert run.calls == []


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_says_what_changed_from_the_original(shared_world: World, script: str) -> None:
    """Real: -h prints the usage on stdout, exit 0, and touches nothing."""
    run = shared_world.run(script, "-h")
    assert run.returncode == 0
    assert f"Usage: {script} -p PROFILE [-r REGION] [-s STACK_NAME]" in run.stdout
    assert "Changed from the original sample" in run.stdout
    assert run.calls == []


@pytest.mark.parametrize(
    ("script", "args", "message"),
    [
        # -r became the region, so a lone -u must not guess a repository.
        ("init.sh", ("-u", "alice"), "-u needs -n REPO"),
        ("init.sh", ("-n", "app"), "-n REPO needs -u DOCKERHUB_USER"),
        ("init.sh", ("-e", "clb"), "-e needs nlb or alb, got 'clb'"),
        ("deploy.sh", ("-e", "clb"), "-e needs nlb or alb, got 'clb'"),
        (
            "deploy.sh",
            ("-o", "LoadBalancerType=alb"),
            "LoadBalancerType is set by deploy.sh itself",
        ),
    ],
)
def test_a_wrong_value_is_refused_before_any_call(
    shared_world: World, script: str, args: tuple[str, ...], message: str
) -> None:
    """Real: the scripts' checks of option values and combinations, made before any call."""
    assert_usage_refused(shared_world.run(script, "-p", PROFILE, *args), message)


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
    shared_world: World, script: str, without: tuple[str, ...], named: str
) -> None:
    """Real: the prerequisite checks, with the tools really absent from PATH."""
    args = ["-p", PROFILE, *(["-y"] if script == "destroy.sh" else [])]
    run = shared_world.run(script, *args, without=without)
    assert run.returncode == 1
    lines = run.stderr.splitlines()
    assert len(lines) == len(without), run.stderr
    assert any(named in line and "install" in line for line in lines), run.stderr
    assert run.calls == []


def test_region_is_required_when_the_profile_has_none(shared_world: World) -> None:
    """Real: `aws configure get region` (moto not involved) for a profile without a region."""
    run = shared_world.run("deploy.sh", "-p", "noregion")
    assert run.returncode == 1
    assert "no region: pass -r REGION" in run.stderr
    assert run.ops() == [("configure", "get", "")]
