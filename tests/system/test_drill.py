"""`python -m ops.drill` end to end, against real servers on loopback.

The deployment: a real Valkey primary with a real replica behind a switchable endpoint (the
stand-in for ElastiCache's primary endpoint name), three gunicorn replicas of the app, and haproxy
round-robin in front (the load balancer). The drill runs as an operator runs it, as its own
process; what it calls is what it calls on AWS, answered here:

- ElastiCache: boto3 against ``tests/stubs/elasticache.py`` (AWS_ENDPOINT_URL), which passes
  DescribeReplicationGroups to moto's server (the replication group is created there) and answers
  TestFailover and DescribeEvents itself, as moto 5.2 implements neither: TestFailover promotes
  the real replica, switches the endpoint, makes the old primary a replica of the new one and
  emits AWS's events as each step happens.
- kubectl: the recording stand-in ``tests/stubs/standin.py`` on PATH; its ``rollout restart`` is
  seen in its log by this test, which then replaces the three replicas one by one as a rollout
  does (out of the load balancer, SIGTERM, a new replica, back in), and ``rollout status``
  answers once that is done.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import pytest
import requests
from moto.server import ThreadedMotoServer

from localservers.endpoint import SwitchableProxy
from localservers.gunicorn import Gunicorn, start_gunicorn, stop_together
from localservers.haproxy import Haproxy
from localservers.ports import free_port
from localservers.waits import wait_until
from tests.stubs.elasticache import ElastiCacheStandIn, Emit
from tests.support import REPO_ROOT, replica_env

from .faults import ValkeyProcess

NAMES = ("drill-a", "drill-b", "drill-c")
GROUP = "drill-cache"
REGION = "eu-central-1"
# How long the primary is gone before the replica takes over (ElastiCache: several seconds).
FAILOVER_DETECTION_SECONDS = 1.5
STANDIN = REPO_ROOT / "tests" / "stubs" / "standin.py"
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": REGION,
}


@dataclass
class Deployment:
    """The app as deployed, on loopback, and the drill's AWS and kubectl stand-ins."""

    tmp: Path
    primary: ValkeyProcess
    replica: ValkeyProcess
    endpoint: SwitchableProxy
    balancer: Haproxy | None = None
    replicas: dict[str, Gunicorn] = field(default_factory=dict)
    started: list[Gunicorn] = field(default_factory=list)
    elasticache: ElastiCacheStandIn | None = None
    rollouts: list[str] = field(default_factory=list)

    def start_replica(self, name: str, **env: str) -> Gunicorn:
        replica = start_gunicorn(
            name,
            replica_env(self.endpoint.port, name, WEB_CONCURRENCY="2", LOG_LEVEL="WARNING", **env),
            self.tmp / f"{name}.log",
        )
        self.started.append(replica)
        return replica

    def promote(self, emit: Emit) -> None:
        """What ElastiCache does on TestFailover, with its events: the primary node goes down,
        the replica becomes the primary and the endpoint's name follows it, and the old node,
        replaced, recovers as the new primary's replica."""
        old, new = f"{GROUP}-001", f"{GROUP}-002"
        self.primary.stop()
        # ElastiCache takes seconds to notice and promote; scaled down, a fixed wait by design.
        time.sleep(FAILOVER_DETECTION_SECONDS)
        self.replica.replicate(None)
        self.endpoint.switch(self.replica.port)
        done = f"Failover from primary node {old} to replica node {new} completed"
        emit(old, "cache-cluster", done)
        emit(GROUP, "replication-group", done)
        self.primary.start()  # the replaced node, same address, no data (AOF off)
        self.primary.replicate(self.replica)
        emit(old, "cache-cluster", "Recovering cache nodes 0001")
        wait_until(lambda: self.primary.in_sync_with(self.replica), 30, "the old primary to resync")
        emit(old, "cache-cluster", "Finished recovery for cache nodes 0001")

    def rolling_restart(self) -> None:
        """Each replica in turn: out of the load balancer, drained by SIGTERM, a new one in."""
        assert self.balancer is not None
        for slot in NAMES:
            old = self.replicas[slot]
            self.balancer.command(f"set server replicas/{slot} state maint")
            time.sleep(0.5)  # the preStop pause (40 s on EKS), scaled down: a fixed wait by design
            assert old.stop() == 0, old.log()
            new = self.replicas[slot] = self.start_replica(f"{old.name}-new")
            self.balancer.command(f"set server replicas/{slot} addr 127.0.0.1 port {new.port}")
            self.balancer.command(f"set server replicas/{slot} state ready")
            self.rollouts.append(new.name)


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    primary = ValkeyProcess(tmp_path / "primary")
    replica = ValkeyProcess(tmp_path / "replica")
    replica.replicate(primary)
    endpoint = SwitchableProxy(primary.port)
    world = Deployment(tmp_path, primary, replica, endpoint)
    try:
        wait_until(lambda: replica.in_sync_with(primary), 15, "the replica to sync")
        yield world
    finally:
        if world.balancer is not None:
            world.balancer.stop()
        stop_together(world.started)
        endpoint.close()
        replica.stop()
        primary.stop()


def _serve(world: Deployment, **env: str) -> str:
    """Three replicas behind haproxy; the load balancer's URL."""
    for name in NAMES:
        world.replicas[name] = world.start_replica(name, **env)
    world.balancer = Haproxy(world.tmp, {n: r.port for n, r in world.replicas.items()})
    world.balancer.start()
    return world.balancer.url


@pytest.fixture
def aws(deployment: Deployment) -> Iterator[ElastiCacheStandIn]:
    """moto's server holding the replication group, and the ElastiCache stand-in before it."""
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    moto_url = f"http://{host}:{port}"
    # moto's state lives in this process, shared by every server it starts: begin empty.
    requests.post(f"{moto_url}/moto-api/reset", timeout=10).raise_for_status()
    # moto makes a replica for ReplicasPerNodeGroup only (NumCacheClusters is ignored).
    boto3.client(
        "elasticache", endpoint_url=moto_url, region_name=REGION, **_keys()
    ).create_replication_group(
        ReplicationGroupId=GROUP,
        ReplicationGroupDescription="the drill's cache",
        Engine="valkey",
        CacheNodeType="cache.t3.micro",
        ReplicasPerNodeGroup=1,
        AutomaticFailoverEnabled=True,
        MultiAZEnabled=True,
    )
    standin = ElastiCacheStandIn(moto_url, deployment.promote)
    standin.start()
    deployment.elasticache = standin
    try:
        yield standin
    finally:
        standin.stop()
        moto.stop()


def _keys() -> dict[str, str]:
    return {
        "aws_access_key_id": AWS_ENV["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": AWS_ENV["AWS_SECRET_ACCESS_KEY"],
    }


@pytest.fixture
def kubectl(deployment: Deployment, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The recording kubectl on PATH, and a watcher that performs the rollout it is asked for."""
    real = shutil.which("kubectl") or "/bin/false"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "kubectl").symlink_to(STANDIN)
    log = tmp_path / "kubectl.jsonl"
    log.touch()
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            calls = [json.loads(line) for line in log.read_text().splitlines()]
            if any(c["argv"][:2] == ["rollout", "restart"] for c in calls):
                deployment.rolling_restart()
                Path(f"{log}.rollout-done").touch()
                return
            stop.wait(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield {
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "STUB_LOG": str(log),
            "REAL_KUBECTL": real,
        }
    finally:
        stop.set()
        watcher.join(120)


def _drill(
    *args: str, env: dict[str, str], timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ops.drill", *args],
        cwd=REPO_ROOT,
        env={**os.environ, **AWS_ENV, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _number(pattern: str, text: str) -> float:
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not in the report:\n{text}"
    return float(match.group(1))


def test_a_failover_and_a_rollout_under_load_lose_no_acknowledged_save(
    deployment: Deployment, aws: ElastiCacheStandIn, kubectl: dict[str, str]
) -> None:
    url = _serve(deployment)
    result = _drill(
        # Every user is on before the failover (12 a second, not the default 1), which then
        # comes after 3 s; 2 s of load after each disruption (the new pods are seen serving).
        *("--url", url, "--users", "12", "--rate", "40", "--save-every", "3", "--spawn-rate", "12"),
        *("--duration", "20", "--disrupt-after", "3", "--settle", "2", "--window", "5"),
        *("--failover", GROUP, "--rollout", "--failover-timeout", "60"),
        *("--rollout-timeout", "120"),
        env={**kubectl, "AWS_ENDPOINT_URL": aws.url},
    )
    report = result.stdout
    print(f"\n{report}\n{result.stderr[-2000:]}")
    assert result.returncode == 0, report + result.stderr
    assert "PASS:" in report
    # The saves: many acknowledged, none lost or doubled, checked on every session's page.
    assert _number(r"acknowledged \(303\): (\d+)", report) >= 50
    assert "acknowledged saves lost: 0, duplicated: 0" in report
    assert "messages of no save of the session: 0, sessions listing saves out of order: 0" in report
    assert "pages not readable: 0" in report
    # The failover: called through boto3, on the group's only node group, and really done.
    failover_calls = [c for c in aws.calls if c.get("Action") == "TestFailover"]
    assert failover_calls == [
        {
            "Action": "TestFailover",
            "Version": "2015-02-02",
            "ReplicationGroupId": GROUP,
            "NodeGroupId": "0001",
        }
    ]
    assert deployment.replica.client().info("replication")["role"] == "master"
    assert "Finished recovery for cache nodes 0001" in report
    assert re.search(
        r"Failover: TestFailover on drill-cache, node group 0001 \(primary drill-cache-001\)",
        report,
    )
    assert re.search(r"set off at \+[\d.]+ s, reported complete at \+[\d.]+ s", report)
    # The rollout: kubectl asked as an operator would, every replica replaced, all seen serving.
    calls = [
        json.loads(line)["argv"] for line in Path(kubectl["STUB_LOG"]).read_text().splitlines()
    ]
    assert calls == [
        # Before any load: the Deployment is there and may be restarted.
        ["get", "deployment/message-app", "-o", "name"],
        ["auth", "can-i", "patch", "deployment/message-app"],
        ["rollout", "restart", "deployment/message-app"],
        ["rollout", "status", "deployment/message-app", "--timeout=120s"],
    ]
    assert deployment.rollouts == [f"{n}-new" for n in NAMES]
    pods = report.split("Pods that served (X-Served-By)")[1].split("\n\n")[0]
    for name in [*NAMES, *deployment.rollouts]:
        assert re.search(rf"^\s+{name}\s+\d+", pods, re.MULTILINE), name
    assert 'deployment "message-app" successfully rolled out' in report
    # The report's other parts an incident review needs.
    assert re.search(r"^\s+all\s+\d+\s+\d+", report, re.MULTILINE), "requests by status"
    assert re.search(r"^\s+\+0\s+\d+\s+\d+\s+\d+\s+\d+", report, re.MULTILINE), "p50/p99 rows"
    # The drill cleans up after itself: no session of its own is left.
    assert "drill " not in str(deployment.replica.client().keys("*"))


def test_the_drill_reports_saves_a_bad_failover_lost(
    deployment: Deployment, aws: ElastiCacheStandIn
) -> None:
    """A failover to a replica that never had the data (replication broken, WAIT off): the
    acknowledged saves before it are gone, and the drill must say so and fail."""
    deployment.replica.replicate(None)  # detached: it will be promoted empty
    deployment.replica.client().flushall()
    url = _serve(deployment, REDIS_WAIT_REPLICAS="off")
    result = _drill(
        *("--url", url, "--users", "6", "--rate", "20", "--save-every", "2", "--spawn-rate", "6"),
        *("--duration", "8", "--disrupt-after", "2", "--settle", "2", "--failover", GROUP),
        *("--failover-timeout", "60"),
        env={"AWS_ENDPOINT_URL": aws.url},
    )
    print(f"\n{result.stdout}\n{result.stderr[-2000:]}")
    assert result.returncode == 1, result.stdout + result.stderr
    assert _number(r"acknowledged saves lost: (\d+)", result.stdout) > 0
    assert re.search(r"^FAIL: .*\d+ acknowledged saves lost", result.stdout, re.MULTILINE)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("no-such-group", f"no replication group no-such-group in {REGION}"),
        ("fes-sessions", "fes-sessions is an ElastiCache Serverless cache: Serverless has no"),
    ],
)
def test_a_serverless_or_unknown_cache_is_refused_before_any_load(
    deployment: Deployment, aws: ElastiCacheStandIn, name: str, message: str
) -> None:
    aws.serverless.add("fes-sessions")
    url = deployment.start_replica("solo").url  # the app answering /healthz is all it needs
    result = _drill("--url", url, "--failover", name, env={"AWS_ENDPOINT_URL": aws.url})
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert result.stdout == ""
    assert [c["Action"] for c in aws.calls] == [
        "DescribeReplicationGroups",
        "DescribeServerlessCaches",
    ]


def test_a_rollout_kubectl_may_not_make_is_refused_before_the_failover(
    deployment: Deployment, aws: ElastiCacheStandIn, kubectl: dict[str, str]
) -> None:
    """kubectl may not restart the Deployment (RBAC, or the wrong namespace): the drill stops
    before any load and before it sets off the failover, instead of after (found by review:
    a real TestFailover, one of 15 a day, then a failed rollout)."""
    url = deployment.start_replica("solo").url
    result = _drill(
        "--url", url, "--failover", GROUP, "--rollout",
        env={**kubectl, "AWS_ENDPOINT_URL": aws.url, "STUB_KUBECTL_DENIED": "1"},
    )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert "kubectl may not restart deployment/message-app" in result.stderr
    assert result.stdout == ""
    assert "TestFailover" not in [c["Action"] for c in aws.calls]


def test_an_unreachable_app_exits_3() -> None:
    result = _drill("--url", f"http://127.0.0.1:{free_port()}", "--timeout", "1", env={})
    assert result.returncode == 3
    assert "did not answer 200 in time" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--url", "127.0.0.1:80"],
        ["--url", "http://x", "--users", "0"],
        ["--url", "http://x", "--save-every", "1"],
        ["--url", "http://x", "--duration", "-1"],
    ],
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    assert _drill(*args, env={}, timeout=60).returncode == 2


def test_the_drill_never_imports_the_app() -> None:
    probe = (
        "import sys, ops.drill.__main__; "
        "print(sorted(m for m in sys.modules if m == 'app' or m.startswith('app.')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.strip() == "[]"
