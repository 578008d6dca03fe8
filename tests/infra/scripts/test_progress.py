"""deploy.sh and destroy.sh follow their stacks on a loop of their own and print the progress:
one line per resource event (elapsed time, the stack's resources complete out of its total, the
nested stack), no time limit, and on failure the first resource that failed, with its reason.

Real: the scripts, jq, and for the bootstrap stack moto's own stack and events. Recorded (the
stand-in plays tests/fixtures/aws/stack-events/ one step per describe-stacks poll): the main
stack's operations, which moto cannot give (it creates stacks at once, never fails one, has no
nested stacks). While a recording plays, `aws cloudformation wait` answers as the AWS CLI's
waiter would over the recorded times (a poll every 30 s, 120 at most), so a script that waited
with it would stop at one hour.
"""

from __future__ import annotations

import os
import re
import signal as signals
import subprocess
from pathlib import Path

import pytest

from localservers.processes import child_pids
from localservers.waits import wait_until
from tests.support import REPO_ROOT

from ..cfn import load_path
from .harness import (
    PROFILE,
    STACK,
    STACK_EVENTS,
    World,
    assert_profile_and_region,
)

# A progress line: [mm:ss] done/total  [Nested/]Resource  Type  STATUS[  reason]
LINE = re.compile(r"^  \[(\d\d):(\d\d)\] (\d+)/(\d+)  (\S+)  (\S+)  (\S+)(?:  (.*))?$")


def _progress(stdout: str) -> list[tuple[int, int, str, str, str]]:
    """(done, total, where, type, status) of every progress line, in order."""
    return [
        (int(m[3]), int(m[4]), m[5], m[6], m[7]) for m in map(LINE.match, stdout.splitlines()) if m
    ]


def test_deploy_follows_a_creation_past_an_hour_and_shows_its_progress(world: World) -> None:
    """Recorded: a main-stack creation of 65 minutes (stack-events/create-65-minutes.json: a
    cluster-mode cache still creating after an hour). The CLI's waiter would give up at 60
    minutes and deploy.sh would report a failure while the stack was still being made; the
    script's own loop follows it to CREATE_COMPLETE and shows each nested stack and resource."""
    run = world.run(
        "deploy.sh", "-p", PROFILE, "-m", "cluster",
        # A poll without a new event says what is still running (after a minute, by default).
        env={"STUB_MAIN_EVENTS": str(STACK_EVENTS / "create-65-minutes.json"),
             "STACK_QUIET_SECONDS": "0"},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert not [op for op in run.ops() if op[1] == "wait"]
    main = run.stdout.split(f"==> creating stack {STACK}:", 1)[1]
    lines = _progress(main)
    assert lines, main
    # The total is main.yaml's resource count (as a template parser counts them), on every line.
    total = len(load_path(world.root / "cfn" / "main.yaml")["Resources"])
    assert {t for _, t, *_ in lines} == {total}
    assert f"{STACK}: {total} resources" in run.stdout
    # Each nested stack's completion moves the count on by one, and never back.
    finished = [
        (done, where)
        for done, _, where, kind, status in lines
        if status == "CREATE_COMPLETE" and kind == "AWS::CloudFormation::Stack"
        and "/" not in where and where != STACK
    ]  # fmt: skip
    assert [done for done, _ in finished] == list(range(1, len(finished) + 1))
    assert [where for _, where in finished][:4] == [
        "NetworkStack", "EKSStack", "SecurityGroupStack", "CacheStack",
    ]  # fmt: skip
    # The nested stacks' own resources, as they happen.
    shown = {(where, status) for _, _, where, _, status in lines}
    assert ("EKSStack/Cluster", "CREATE_IN_PROGRESS") in shown
    assert ("EKSStack/Cluster", "CREATE_COMPLETE") in shown
    assert ("CacheStack/ClusterReplicationGroup", "CREATE_COMPLETE") in shown
    # The recorded hour-long wait for the cache: no event, so a line names what still runs.
    assert re.search(r"^  \[\d\d:\d\d\] still in progress: .*ClusterReplicationGroup", main, re.M)
    assert re.search(r"^  \[\d\d:\d\d\] CREATE_COMPLETE$", main, re.M), main
    assert "Next:" in run.stdout
    assert_profile_and_region(run)


@pytest.mark.parametrize("template", ["bootstrap.yaml", "main.yaml"])
def test_the_resource_count_is_what_a_creation_makes(template: str) -> None:
    """Real: the scripts' awk count on the stacks deploy.sh creates, against the parsed
    template; neither declares a conditional resource, so every one is made."""
    path = REPO_ROOT / "cfn" / template
    out = subprocess.run(
        ["bash", "-c", '. scripts/progress.sh && template_resource_count "$0"', str(path)],
        cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    resources = load_path(path)["Resources"]
    assert int(out.stdout) == len(resources) > 0
    assert not [name for name, resource in resources.items() if "Condition" in resource]


@pytest.mark.parametrize(("name", "status"), [("INT", 130), ("TERM", 143)])
def test_a_script_stopped_by_a_signal_says_what_it_left(name: str, status: int) -> None:
    """Real bash and scripts/common.sh. Stopped by Ctrl-C or SIGTERM, a script ran its EXIT trap
    with the last command's status, 0, so the note on what it left (init.sh -R: a rotation step
    taken, .deploy/ not written) was never printed (found by review). Its scratch directory
    still goes; without a note it prints nothing. The signal goes to the script's whole process
    group while it waits for a command, as the terminal's Ctrl-C does. (A signal that reaches
    bash alone, while it waits or just before it starts a command, is trapped only once the
    command ends: a first version of this test sent it with `kill $$` from the script.)"""
    script = """
        set -euo pipefail
        PROG=test.sh
        . scripts/common.sh
        make_work_dir
        FAILURE_NOTE="${NOTE:-}"
        echo "$WORK"
        sleep 30
    """
    for note in ("a step was taken", ""):
        # SIGINT and SIGTERM as a terminal's shell leaves them: a run started in the background
        # by a shell without job control (`cmd &`) ignores SIGINT, and so does all it starts,
        # and bash cannot trap a signal ignored when it started (CI, started so, saw this test
        # wait out its sleep).
        with subprocess.Popen(
            ["env", "--default-signal=INT,TERM", "bash", "-c", script],
            cwd=REPO_ROOT, env={"NOTE": note, "PATH": "/usr/bin:/bin"},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        ) as run:  # fmt: skip
            try:
                assert run.stdout is not None
                work = run.stdout.readline().strip()  # under way: the note is set
                wait_until(lambda: child_pids(run.pid), 10, "the script to run its command")
                os.killpg(run.pid, getattr(signals, f"SIG{name}"))
                _, stderr = run.communicate(timeout=20)
            finally:
                if run.poll() is None:
                    os.killpg(run.pid, signals.SIGKILL)
        assert run.returncode == status
        # bash's own report of the command a SIGTERM killed ("Terminated") aside.
        said = [line for line in stderr.splitlines() if line != "Terminated"]
        assert said == ([f"test.sh: {note}"] if note else [])
        assert work and not Path(work).exists()
