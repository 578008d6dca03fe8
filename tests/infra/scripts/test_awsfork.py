"""The AWS CLI fork server (tests/stubs/awsfork.py) answers as the `aws` script started afresh:
the same exit status, output and error output for the kinds of call the scripts make, with the
caller's environment, working directory and standard input."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.stubs import awsfork

from .harness import PROFILE, REAL_AWS, REGION, World

AWS = ["--profile", PROFILE, "--region", REGION]
CALLS = {
    "version": ["--version"],
    "profile region": ["configure", "get", "region", "--profile", PROFILE],
    "json": [*AWS, "sts", "get-caller-identity", "--output", "json"],
    "query as text": [*AWS, "secretsmanager", "list-secrets", "--query", "SecretList[].Name",
                      "--output", "text"],
    "service error": [*AWS, "cloudformation", "describe-stacks", "--stack-name", "absent"],
    "usage error": [*AWS, "cloudformation", "describe-stacks", "--no-such-option"],
    "standard input": [*AWS, "s3", "cp", "-", "s3://fork-test/from-stdin", "--no-progress"],
    "relative path": [*AWS, "s3", "cp", "local.txt", "s3://fork-test/local.txt", "--no-progress"],
    "listing": [*AWS, "s3", "ls", "s3://fork-test/"],
    # A service whose models the server did not load before forking (awsfork.SERVICES).
    "other service": [*AWS, "elasticache", "describe-cache-clusters", "--output", "json"],
}  # fmt: skip


def _afresh(world: World, argv: list[str], cwd: Path, stdin: Path) -> tuple[int, str, str]:
    with stdin.open("rb") as given:
        out = subprocess.run(
            [str(REAL_AWS), *argv], cwd=cwd, env=world.env, stdin=given,
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    return out.returncode, out.stdout, out.stderr


def _forked(
    world: World, server: str, argv: list[str], cwd: Path, stdin: Path, env: dict[str, str]
) -> tuple[int, str, str]:
    out, err = cwd / "fork.out", cwd / "fork.err"
    with stdin.open("rb") as given, out.open("w+b") as o, err.open("w+b") as e:
        code = awsfork.call(server, argv, env, str(cwd), (given.fileno(), o.fileno(), e.fileno()))
    return code, out.read_text(), err.read_text()


@pytest.mark.parametrize("name", CALLS)
def test_a_forked_call_answers_as_the_cli_started_afresh(
    world: World, aws_server: str, tmp_path: Path, name: str
) -> None:
    """Real: the AWS CLI against moto, once started afresh and once forked, each after the same
    preparation (a bucket, a file in the working directory, the same standard input)."""
    s3 = world.client("s3")
    s3.create_bucket(Bucket="fork-test", CreateBucketConfiguration={"LocationConstraint": REGION})
    s3.put_object(Bucket="fork-test", Key="listed.txt", Body=b"listed\n")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "local.txt").write_text("a file in the working directory\n")
    stdin = tmp_path / "stdin"
    stdin.write_text("read from standard input\n")
    afresh = _afresh(world, CALLS[name], cwd, stdin)
    forked = _forked(world, aws_server, CALLS[name], cwd, stdin, world.env)
    assert forked == afresh
    if name == "standard input":
        body = s3.get_object(Bucket="fork-test", Key="from-stdin")["Body"].read()
        assert body == b"read from standard input\n"


def test_a_call_that_would_change_how_the_cli_starts_is_refused(
    world: World, aws_server: str, tmp_path: Path
) -> None:
    """What Python and the CLI read once at start (the server's) cannot follow a call's
    environment: such a call fails loudly instead of running with the server's values."""
    stdin = tmp_path / "stdin"
    stdin.write_text("")
    for name, value in (("AWS_DATA_PATH", str(tmp_path)), ("LANG", "C")):
        code, out, err = _forked(
            world, aws_server, ["--version"], tmp_path, stdin, {**world.env, name: value}
        )
        assert (code, out) == (2, "")
        assert f"awsfork: ['{name}'] differ from the server's" in err
