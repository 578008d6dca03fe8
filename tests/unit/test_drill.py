"""The drill's parts that need no server: the audit of the saves, the report's arithmetic, and the
failover's checks of a replication group against ElastiCache's answers (botocore's Stubber, which
checks each call's parameters against the API model). None of these modules imports Locust."""

from __future__ import annotations

import sys
from datetime import UTC, datetime

import pytest
from botocore.stub import Stubber

from ops.drill.disruptions import Failover, Refused
from ops.drill.records import Answer, Disruption, Run, SessionRecord, audit
from ops.drill.report import format_report

T0 = 1_800_000_000.0


def session(sent: list[str], acknowledged: list[str], listed: list[str] | None) -> SessionRecord:
    return SessionRecord(1, None, sent, acknowledged, listed)


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        (session(["a", "b"], ["a", "b"], ["a", "b"]), {}),
        (session(["a", "b"], ["a", "b"], ["a"]), {"lost": 1}),
        (session(["a", "b"], ["a", "b"], ["a", "b", "b"]), {"duplicated": 1}),
        (session(["a"], ["a"], ["a", "z"]), {"foreign": 1}),
        (session(["a", "b"], ["a", "b"], ["b", "a"]), {"out_of_order": 1}),
        (session(["a"], ["a"], None), {"unread": 1}),
        # Answered with an error, yet stored once: allowed, the answer was what got lost.
        (session(["a", "b", "c"], ["a", "c"], ["a", "b", "c"]), {"stored_unacknowledged": 1}),
    ],
)
def test_the_audit_counts_each_kind_of_harm(
    record: SessionRecord, expected: dict[str, int]
) -> None:
    result = audit([record])
    kinds = ("lost", "duplicated", "foreign", "out_of_order", "unread", "stored_unacknowledged")
    assert {k: getattr(result, k) for k in kinds if getattr(result, k)} == expected
    assert result.passed == (set(expected) <= {"stored_unacknowledged"})


def test_sessions_that_never_saved_are_not_checked() -> None:
    result = audit([session([], [], None), session(["a"], ["a"], ["a"])])
    assert (result.sessions, result.unread, result.passed) == (1, 0, True)


def test_nothing_acknowledged_proves_nothing() -> None:
    assert not audit([session(["a"], [], [])]).passed


def _run() -> Run:
    run = Run("http://lb.example", users=2, rate=4, save_every=3, tag="abc123", started=T0)
    run.load_stopped = T0 + 12
    failover = Disruption("failover", "TestFailover on g, node group 0001")
    failover.started, failover.ended = T0 + 3, T0 + 8
    failover.mark("AWS g: Failover from primary node g-001 to replica node g-002 completed", T0 + 6)
    run.disruptions.append(failover)
    for i in range(12):
        run.answers.append(Answer("page", T0 + i, 10.0 + i, 200, "pod-a" if i < 6 else "pod-b"))
    run.answers += [
        Answer("save", T0 + 4.0, 200.0, 503, "pod-a"),
        Answer("save", T0 + 5.5, 1000.0, 0, None),
        Answer("save", T0 + 7.0, 30.0, 303, "pod-b"),
    ]
    run.sessions.append(SessionRecord(1, None, ["m1"], ["m1"], ["m1"]))
    return run


def test_the_report_measures_the_error_window_and_the_pods() -> None:
    run = _run()
    report = format_report(run, audit(run.sessions), window=5)
    # The failover's window: from the 503 sent at +4.0 to the no-answer given up at +6.5.
    assert "failed requests: 2 of 12 (503: 1, no answer: 1)" in report
    assert "first failed request sent at +4.0 s, last answered at +6.5 s: 2.5 s" in report
    assert "set off at +3.0 s, reported complete at +8.0 s (5.0 s)" in report
    assert "    +6.0  failover: AWS g: Failover from primary node g-001" in report
    lines = report.splitlines()
    rows = lines[lines.index("Requests by status") + 1 :][:4]
    assert rows[0].split() == ["requests", "total", "200", "303", "503", "no", "answer"]
    assert rows[3].split() == ["all", "15", "12", "1", "1", "1"]
    # Per 5 s: +0 holds pages 0-4 (p50 12 ms); +5 holds five pages, a save answered, one not.
    latency = lines[
        lines.index("Latency per 5 s (answered requests; failed: 5xx or no answer)") + 1 :
    ]
    assert latency[1].split() == ["+0", "6", "1", "12", "191", "failover"]
    assert latency[2].split()[:3] == ["+5", "7", "1"]
    pods = lines[lines.index("Pods that served (X-Served-By)") + 1 :][:3]
    assert [p.split() for p in pods[1:]] == [
        ["pod-a", "7", "+0.0", "+5.0"],
        ["pod-b", "7", "+6.0", "+11.0"],
    ]
    assert lines[-1].startswith("PASS:")


def test_a_disruption_that_did_not_complete_fails_the_run() -> None:
    run = _run()
    run.disruptions[0].ended, run.disruptions[0].error = None, "no recovery event within 60 s"
    report = format_report(run, audit(run.sessions))
    assert "NOT COMPLETE: no recovery event within 60 s" in report
    assert report.splitlines()[-1] == "FAIL: failover did not complete"


def _group(**changes: object) -> dict[str, object]:
    group: dict[str, object] = {
        "ReplicationGroupId": "g",
        "Status": "available",
        "AutomaticFailover": "enabled",
        "ClusterEnabled": False,
        "NodeGroups": [
            {
                "NodeGroupId": "0001",
                "NodeGroupMembers": [
                    {"CacheClusterId": "g-001", "CurrentRole": "primary"},
                    {"CacheClusterId": "g-002", "CurrentRole": "replica"},
                ],
            }
        ],
    }
    return group | changes


@pytest.fixture
def failover(monkeypatch: pytest.MonkeyPatch) -> Failover:
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "eu-central-1",
    }.items():
        monkeypatch.setenv(key, value)
    return Failover("g", poll_seconds=0)


def _prepare(failover: Failover, *answers: tuple[str, dict, dict]) -> str:
    """prepare() with the client's calls answered, in order, by the Stubber."""
    import boto3

    client = boto3.client("elasticache")
    stubber = Stubber(client)
    for method, response, params in answers:
        if "Error" in response:
            error = response["Error"]
            stubber.add_client_error(
                method, error["Code"], error["Message"], expected_params=params
            )
        else:
            stubber.add_response(method, response, params)
    with stubber, pytest.MonkeyPatch.context() as patch:
        patch.setattr(boto3.Session, "client", lambda *_a, **_k: client)
        described = failover.prepare()
    stubber.assert_no_pending_responses()
    return described


def test_a_replication_group_with_a_replica_is_prepared(failover: Failover) -> None:
    described = _prepare(
        failover,
        (
            "describe_replication_groups",
            {"ReplicationGroups": [_group()]},
            {"ReplicationGroupId": "g"},
        ),
    )
    assert described == "TestFailover on g, node group 0001 (primary g-001)"
    assert failover.sources == {"g", "g-001", "g-002"}


def test_cluster_mode_fails_over_one_shard(failover: Failover) -> None:
    shards = [
        {
            "NodeGroupId": f"000{i}",
            "NodeGroupMembers": [{"CacheClusterId": f"g-000{i}-00{n}"} for n in (1, 2)],
        }
        for i in (1, 2, 3)
    ]
    failover.node_group = "0002"
    described = _prepare(
        failover,
        (
            "describe_replication_groups",
            {"ReplicationGroups": [_group(ClusterEnabled=True, NodeGroups=shards)]},
            {"ReplicationGroupId": "g"},
        ),
    )
    assert described == (
        "TestFailover on g, node group 0002; cluster mode: one shard of 3 fails over, "
        "the others keep serving"
    )
    assert failover.sources == {"g", "g-0002-001", "g-0002-002"}


@pytest.mark.parametrize(
    ("group", "message"),
    [
        (_group(Status="modifying"), "replication group g is modifying, not available"),
        (
            _group(AutomaticFailover="disabled"),
            "automatic failover disabled: TestFailover needs it",
        ),
        (
            _group(
                NodeGroups=[
                    {"NodeGroupId": "0001", "NodeGroupMembers": [{"CacheClusterId": "g-001"}]}
                ]
            ),
            "node group 0001 of g has no replica",
        ),
    ],
)
def test_a_group_that_cannot_fail_over_is_refused(
    failover: Failover, group: dict, message: str
) -> None:
    with pytest.raises(Refused, match=message):
        _prepare(
            failover,
            (
                "describe_replication_groups",
                {"ReplicationGroups": [group]},
                {"ReplicationGroupId": "g"},
            ),
        )


def test_a_serverless_cache_is_refused_with_the_reason(failover: Failover) -> None:
    not_found = {"Error": {"Code": "ReplicationGroupNotFoundFault", "Message": "not found"}}
    serverless = {"ServerlessCaches": [{"ServerlessCacheName": "g", "Status": "available"}]}
    with pytest.raises(Refused, match="Serverless has no TestFailover"):
        _prepare(
            failover,
            ("describe_replication_groups", not_found, {"ReplicationGroupId": "g"}),
            ("describe_serverless_caches", serverless, {"ServerlessCacheName": "g"}),
        )


def test_the_failover_waits_for_the_recovery_event_of_its_own_call(failover: Failover) -> None:
    """Events of an earlier drill in the window are skipped; the recovery event ends it."""
    failover.client = client = __import__("boto3").client("elasticache")
    failover.node_group, failover.sources = "0001", {"g", "g-001"}
    started = datetime.now(UTC).timestamp()

    def event(source: str, message: str, offset: float) -> dict[str, object]:
        return {"SourceIdentifier": source, "SourceType": "cache-cluster", "Message": message,
                "Date": datetime.fromtimestamp(started + offset, UTC)}  # fmt: skip

    stale = event("g-001", "Finished recovery for cache nodes 0001", -20)
    called = event("g", "Test Failover API called for node group 0001", 0.1)
    done = event("g-001", "Finished recovery for cache nodes 0001", 9)
    other = event("h-001", "Finished recovery for cache nodes 0001", 1)
    stubber = Stubber(client)
    stubber.add_response("test_failover", {"ReplicationGroup": {"ReplicationGroupId": "g"}},
                         {"ReplicationGroupId": "g", "NodeGroupId": "0001"})  # fmt: skip
    stubber.add_response("describe_events", {"Events": [stale, called, other]})
    stubber.add_response("describe_events", {"Events": [stale, called, other, done]})
    record = Disruption("failover", "")
    with stubber:
        failover.run(record)
    assert record.completed
    assert record.ended == done["Date"].timestamp()  # type: ignore[union-attr]
    assert [m.text for m in record.marks] == [
        "TestFailover called on g node group 0001",
        "AWS g: Test Failover API called for node group 0001",
        "AWS g-001: Finished recovery for cache nodes 0001",
    ]


def test_these_modules_do_not_import_locust() -> None:
    """Locust monkey-patches the standard library on import: the tests' process must not."""
    assert "locust" not in sys.modules and "gevent" not in sys.modules
