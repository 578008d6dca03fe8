"""The disruptions a drill sets off while its load runs, each run to its end and timed.

- ``Failover``: ElastiCache's ``TestFailover`` through boto3 on one node group (shard) of a
  replication group, then AWS's events until the old primary has recovered as a replica. Cluster
  mode: one shard fails over, the others keep serving. ElastiCache Serverless has no TestFailover
  (AWS fails its nodes over itself, nothing can trigger it): refused with that reason.
- ``Rollout``: ``kubectl rollout restart`` of the Deployment, then ``kubectl rollout status``
  until every pod has been replaced.

Both use the operator's own tools and credentials (the AWS profile or environment; the
kubeconfig context), and only public APIs. The drill knows nothing else of where it runs.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from ops.drill.records import Disruption

# AWS's events for a test failover, in the order the TestFailover reference lists them; the
# last one ends the disruption: the old primary is back, as a replica, and replication with it.
CALLED = re.compile(r"Test Failover API called for node group (\S+)")
RECOVERED = re.compile(r"Finished recovery for cache nodes")
FAILED = re.compile(r"\bfailed\b", re.IGNORECASE)


class Refused(Exception):
    """The disruption cannot be run against this target; the message says why (a usage error)."""


class Unreachable(Exception):
    """The tool or the API the disruption needs cannot be reached."""


class Failover:
    """``TestFailover`` on one node group, followed through ElastiCache's events."""

    name = "failover"

    def __init__(
        self,
        group: str,
        node_group: str | None = None,
        profile: str | None = None,
        region: str | None = None,
        timeout: float = 1200.0,
        poll_seconds: float = 5.0,
    ) -> None:
        self.group = group
        self.node_group = node_group
        self.profile = profile
        self.region = region
        self.timeout = timeout
        self.poll_seconds = poll_seconds
        self.sources: set[str] = {group}
        self.client: Any = None

    def prepare(self) -> str:
        """Check that a test failover can run now; return what will be done, in words."""
        import boto3
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            session = boto3.Session(profile_name=self.profile, region_name=self.region)
            self.client = session.client("elasticache")
            groups = self.client.describe_replication_groups(ReplicationGroupId=self.group)
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ReplicationGroupNotFoundFault":
                raise Unreachable(f"ElastiCache: {exc}") from None
            if self._is_serverless():
                raise Refused(
                    f"{self.group} is an ElastiCache Serverless cache: Serverless has no "
                    "TestFailover (AWS fails its nodes over by itself); drill it with --rollout "
                    "or with load alone"
                ) from None
            raise Refused(f"no replication group {self.group} in {session.region_name}") from None
        except BotoCoreError as exc:
            raise Unreachable(f"ElastiCache: {exc}") from None
        return self._describe(groups["ReplicationGroups"][0])

    def _is_serverless(self) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.describe_serverless_caches(ServerlessCacheName=self.group)
        except (BotoCoreError, ClientError):
            return False
        return True

    def _describe(self, group: dict[str, Any]) -> str:
        if group.get("Status") != "available":
            raise Refused(f"replication group {self.group} is {group.get('Status')}, not available")
        if group.get("AutomaticFailover") != "enabled":
            raise Refused(
                f"replication group {self.group} has automatic failover "
                f"{group.get('AutomaticFailover')}: TestFailover needs it (and a replica)"
            )
        node_groups = group.get("NodeGroups", [])
        ids = [g["NodeGroupId"] for g in node_groups]
        if self.node_group is None:
            self.node_group = ids[0] if ids else None
        chosen = next((g for g in node_groups if g["NodeGroupId"] == self.node_group), None)
        if chosen is None:
            raise Refused(f"{self.group} has no node group {self.node_group} (it has {ids})")
        members = chosen.get("NodeGroupMembers", [])
        if len(members) < 2:
            raise Refused(f"node group {self.node_group} of {self.group} has no replica")
        self.sources |= {m["CacheClusterId"] for m in members}
        primaries = [m["CacheClusterId"] for m in members if m.get("CurrentRole") == "primary"]
        what = f"TestFailover on {self.group}, node group {self.node_group}"
        if primaries:
            what += f" (primary {primaries[0]})"
        if group.get("ClusterEnabled"):
            what += f"; cluster mode: one shard of {len(ids)} fails over, the others keep serving"
        return what

    def run(self, record: Disruption) -> None:
        """Call TestFailover, then read AWS's events until the recovery one (or the timeout)."""
        from botocore.exceptions import BotoCoreError, ClientError

        record.started = time.time()
        try:
            self.client.test_failover(ReplicationGroupId=self.group, NodeGroupId=self.node_group)
        except (BotoCoreError, ClientError) as exc:
            record.error = f"TestFailover refused: {exc}"
            return
        called_text = f"TestFailover called on {self.group} node group {self.node_group}"
        record.mark(called_text, record.started)
        seen: set[tuple[str, str, str]] = set()
        called = False
        while time.time() < record.started + self.timeout:
            for event in self._events(since=record.started):
                key = (str(event["Date"]), event["SourceIdentifier"], event["Message"])
                if key in seen:
                    continue
                seen.add(key)
                # Only from this call on: an earlier drill's events may still be in the window.
                match = CALLED.search(event["Message"])
                called = called or bool(match and match.group(1) == self.node_group)
                if not called:
                    continue
                at = event["Date"].timestamp()
                record.mark(f"AWS {event['SourceIdentifier']}: {event['Message']}", at)
                if FAILED.search(event["Message"]):
                    record.error = f"ElastiCache reported: {event['Message']}"
                    return
                if RECOVERED.search(event["Message"]):
                    record.ended = at
                    return
            time.sleep(self.poll_seconds)
        record.error = f"no recovery event from ElastiCache within {self.timeout:.0f} s"

    def _events(self, since: float) -> list[dict[str, Any]]:
        """ElastiCache's events about this group and its nodes since a little before ``since``
        (the two clocks differ by a little), oldest first; none when the call fails (retried)."""
        from botocore.exceptions import BotoCoreError, ClientError

        start = datetime.fromtimestamp(since, UTC) - timedelta(seconds=30)
        events: list[dict[str, Any]] = []
        try:
            for page in self.client.get_paginator("describe_events").paginate(StartTime=start):
                events += [e for e in page["Events"] if e["SourceIdentifier"] in self.sources]
        except (BotoCoreError, ClientError):
            return []
        return sorted(events, key=lambda e: e["Date"])


class Rollout:
    """``kubectl rollout restart`` of the Deployment, then ``kubectl rollout status``."""

    name = "rollout"

    def __init__(
        self, deployment: str = "message-app", namespace: str | None = None, timeout: float = 900.0
    ) -> None:
        self.deployment = deployment
        self.timeout = timeout
        self.kubectl = ["kubectl", *(("--namespace", namespace) if namespace else ())]

    def prepare(self) -> str:
        """Before any load or failover: kubectl is there, finds the Deployment in the namespace
        asked for (the kubeconfig's, else), and may restart it. Found late, the drill would have
        set off a real failover (one of 15 a day) before failing at the rollout."""
        if shutil.which("kubectl") is None:
            raise Unreachable("kubectl is not installed (https://kubernetes.io/docs/tasks/tools/)")
        target = f"deployment/{self.deployment}"
        found = self._kubectl(["get", target, "-o", "name"], 30)
        if found.returncode != 0:
            raise Unreachable(
                f"kubectl cannot read {target} ({found.stderr.strip()}): is the kubeconfig's "
                "context the cluster, and --namespace the stack's AppNamespace?"
            )
        allowed = self._kubectl(["auth", "can-i", "patch", target], 30)
        if allowed.stdout.strip() != "yes":
            raise Refused(
                f"kubectl may not restart {target} (kubectl auth can-i patch answered "
                f"{(allowed.stdout or allowed.stderr).strip() or 'nothing'})"
            )
        return f"kubectl rollout restart {target}"

    def run(self, record: Disruption) -> None:
        record.started = time.time()
        target = f"deployment/{self.deployment}"
        restart = self._kubectl(["rollout", "restart", target], 60)
        if restart.returncode != 0:
            record.error = f"kubectl rollout restart failed: {restart.stderr.strip()}"
            return
        record.mark(restart.stdout.strip() or f"{target} restarted", record.started)
        status = self._kubectl(
            ["rollout", "status", target, f"--timeout={self.timeout:.0f}s"], self.timeout + 30
        )
        if status.returncode != 0:
            record.error = f"kubectl rollout status failed: {status.stderr.strip()}"
            return
        record.ended = time.time()
        lines = status.stdout.strip().splitlines()
        record.mark(lines[-1] if lines else f"{target} rolled out", record.ended)

    def _kubectl(self, args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        try:
            # A fixed argument list, no shell: the deployment and namespace are argv entries.
            return subprocess.run(  # noqa: S603
                [*self.kubectl, *args], capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess(args, 1, "", f"no answer within {timeout:.0f} s")
