"""The app on a real Valkey cluster: where sessions land, a slot moving, a shard failing over,
ACL users; and the read cache where the server refuses CLIENT TRACKING. The tests that change
the cluster (a slot moved, a failover, users) start their own; the others share one.

The save loops check what a user would: no error page but a few 503s, and every save that was
acknowledged (303) listed exactly once, whatever redis-py retried or was redirected meanwhile.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from unittest import mock

import pytest
import requests
from redis.cluster import NodesManager, RedisCluster

from app import create_app, messages, sessions, store
from app.config import Switch
from app.connection import check_server, reload_slot_map
from app.store import KEY_PREFIX
from localservers import HOST
from localservers.cluster import ClusterNode, ValkeyCluster
from localservers.gunicorn import Gunicorn
from localservers.waits import wait_until
from tests.support import csrf_token, listed_messages, replica_env, save, session_keys

from .cluster import flushed
from .test_iam_auth import USER, add_user, change_password


def browse(url: str, browser: requests.Session) -> str:
    response = browser.get(f"{url}/", timeout=10)
    assert response.status_code == 200, response.text
    return response.text


def post_save(url: str, cookies: dict[str, str], token: str, text: str) -> int:
    return requests.post(
        f"{url}/persistMessage",
        data={"message": text, "csrf_token": token},
        cookies=cookies,
        allow_redirects=False,
        timeout=30,
    ).status_code


def start_session(url: str, browser: requests.Session, token: str, text: str = "first") -> int:
    """The first save, whose 303 sets the session cookie in ``browser``."""
    return browser.post(
        f"{url}/persistMessage",
        data={"message": text, "csrf_token": token},
        allow_redirects=False,
        timeout=10,
    ).status_code


class Saver(threading.Thread):
    """Saves into one session, one message after another, until stopped (at most 3000)."""

    def __init__(self, url: str, browser: requests.Session, token: str) -> None:
        super().__init__(daemon=True)
        self.url, self.token = url, token
        self.cookies = browser.cookies.get_dict()
        self.results: list[tuple[float, int, str]] = []  # (finished at, status, text)
        self.halt = threading.Event()

    def run(self) -> None:
        for i in range(3000):
            if self.halt.is_set():
                return
            text = f"live {i}"
            try:
                status = post_save(self.url, self.cookies, self.token, text)
            except requests.RequestException:
                status = 0
            self.results.append((time.monotonic(), status, text))

    def wait_for(self, more: int) -> None:
        """Until ``more`` further saves have finished."""
        target = len(self.results) + more
        wait_until(lambda: len(self.results) >= target, 60, f"{more} more saves")

    def stop(self) -> None:
        self.halt.set()
        self.join(60)
        assert not self.is_alive()


def check_every_acknowledged_save_listed_once(saver: Saver, page: str) -> Counter[int]:
    statuses = Counter(status for _, status, _ in saver.results)
    listed = Counter(listed_messages(page))
    assert all(n == 1 for n in listed.values()), f"stored twice: {listed.most_common(3)}"
    acknowledged = [text for _, status, text in saver.results if status == 303]
    missing = [text for text in acknowledged if listed[text] != 1]
    assert not missing, f"acknowledged but not listed: {missing}; listed {sorted(listed)}"
    return statuses


def session_key(cluster: ValkeyCluster) -> str:
    (key,) = session_keys(cluster.client())
    return key.decode()


def test_sessions_spread_over_every_primary_each_in_one_slot(shared_cluster, start_replica):
    valkey_cluster = flushed(shared_cluster)
    url = start_replica(
        valkey_cluster.port, "spread", RATE_LIMIT_NEW_SESSIONS="40/minute", RATE_LIMIT_SAVES="off"
    ).url
    for i in range(40):
        browser = requests.Session()
        token = csrf_token(browse(url, browser))
        assert post_save(url, browser.cookies.get_dict(), token, f"s{i}") == 303
    # The rate limiter counts in the cluster as well: the 41st new session is refused.
    browser = requests.Session()
    token = csrf_token(browse(url, browser))
    assert post_save(url, browser.cookies.get_dict(), token, "one too many") == 429

    admin = valkey_cluster.nodes[0].client()
    per_primary = {}
    for node in valkey_cluster.nodes:
        if node.role() == "master":
            keys = session_keys(node.client())
            per_primary[node.port] = len(keys)
            for key in keys:
                sid = key.removeprefix(KEY_PREFIX).strip("{}")
                # The hash tag: the session's slot is its id's, whatever else is in the key.
                assert admin.execute_command("CLUSTER", "KEYSLOT", key) == admin.execute_command(
                    "CLUSTER", "KEYSLOT", sid
                )
    print(f"\nsessions per primary (40 sessions): {sorted(per_primary.values())}")
    assert sum(per_primary.values()) == 40
    assert len(per_primary) == 3 and all(per_primary.values())


def start_moving(slot: int, source: ClusterNode, target: ClusterNode) -> None:
    """Mark ``slot`` as moving from ``source`` to ``target`` (the first step of a reshard): a
    key of it not on the source any more answers ASK, towards the target."""
    target.client().execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source.node_id())
    source.client().execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target.node_id())


def migrate_slot(
    cluster: ValkeyCluster, slot: int, source: ClusterNode, target: ClusterNode, saver: Saver
) -> None:
    """Move ``slot`` as valkey-cli --cluster reshard does, with saves going on at each step."""
    start_moving(slot, source, target)
    saver.wait_for(5)  # saves while the slot is migrating but the key still on the source
    move_keys(slot, source, target)
    saver.wait_for(5)  # saves redirected with ASK: the key is on the target already
    hand_over(cluster, slot, source, target)


def move_keys(slot: int, source: ClusterNode, target: ClusterNode) -> None:
    """Move the moving ``slot``'s keys to the target (a reshard's second step)."""
    for _ in range(100):
        keys = source.client().execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100)
        if not keys:
            break
        source.client().execute_command(
            "MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys
        )


def hand_over(cluster: ValkeyCluster, slot: int, source: ClusterNode, target: ClusterNode) -> None:
    """Give ``slot`` to the target on every primary (a reshard's last step)."""
    target_id = target.node_id()
    others = [n for n in cluster.nodes if n.role() == "master" and n not in (source, target)]
    for node in (target, source, *others):
        node.client().execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)


def test_a_live_sessions_slot_moves_to_another_primary_while_it_saves(
    valkey_cluster, start_replica
):
    url = start_replica(valkey_cluster.port, "migrating").url
    browser = requests.Session()
    token = csrf_token(browse(url, browser))
    assert start_session(url, browser, token) == 303
    key = session_key(valkey_cluster)
    slot = int(valkey_cluster.nodes[0].client().execute_command("CLUSTER", "KEYSLOT", key))
    source = valkey_cluster.primary_for(key)
    target = next(n for n in valkey_cluster.nodes[:3] if n is not source)

    saver = Saver(url, browser, token)
    saver.start()
    try:
        saver.wait_for(5)
        migrate_slot(valkey_cluster, slot, source, target, saver)
        saver.wait_for(10)  # and after, with the new slot map
    finally:
        saver.stop()

    assert valkey_cluster.primary_for(key) is target
    assert target.client().exists(key) == 1
    statuses = check_every_acknowledged_save_listed_once(saver, browse(url, browser))
    print(f"\nslot migration during saves: {dict(statuses)}")
    assert set(statuses) <= {303, 503}
    assert statuses[503] <= 3


def test_a_live_sessions_primary_fails_over_while_it_saves(valkey_cluster, start_replica):
    url = start_replica(valkey_cluster.port, "failing-over").url
    browser = requests.Session()
    token = csrf_token(browse(url, browser))
    assert start_session(url, browser, token) == 303
    key = session_key(valkey_cluster)
    primary = valkey_cluster.primary_for(key)
    replica = valkey_cluster.replica_of(primary)

    saver = Saver(url, browser, token)
    saver.start()
    try:
        saver.wait_for(5)
        started = time.monotonic()
        replica.client().execute_command("CLUSTER", "FAILOVER")
        wait_until(lambda: replica.role() == "master", 10, "the replica to take over")
        saver.wait_for(10)
    finally:
        saver.stop()

    assert valkey_cluster.primary_for(key) is replica
    statuses = check_every_acknowledged_save_listed_once(saver, browse(url, browser))
    failed_at = [t - started for t, status, _ in saver.results if status != 303]
    print(f"\nfailover during saves: {dict(statuses)}; failures at {failed_at} s")
    assert set(statuses) <= {303, 503}
    # Saves succeed again within 5 s of the failover: no failure later than that.
    assert all(t <= 5 for t in failed_at)
    assert any(t > started and status == 303 for t, status, _ in saver.results)


def sessions_on_two_primaries(
    cluster: ValkeyCluster,
    start_replica: Callable[..., Gunicorn],
    name: str,
    first_on: ClusterNode | None = None,
) -> tuple[str, list[tuple[ClusterNode, requests.Session]]]:
    """A one-worker replica (rate limits off: their counters would live on some primary too),
    and two browsers, each with a session (one message) on a different primary; the first on
    ``first_on`` when given."""
    url = start_replica(
        cluster.port,
        name,
        WEB_CONCURRENCY="1",
        RATE_LIMIT_SAVES="off",
        RATE_LIMIT_NEW_SESSIONS="off",
    ).url
    by_primary: dict[int, tuple[ClusterNode, requests.Session]] = {}
    for i in range(60):
        browser = requests.Session()
        assert start_session(url, browser, csrf_token(browse(url, browser)), f"s{i}") == 303
        (key,) = session_keys(cluster.client(), browser.cookies["session"])
        primary = cluster.primary_for(key.decode())
        by_primary.setdefault(primary.port, (primary, browser))
        sessions = list(by_primary.values())
        first = sessions[0] if first_on is None else by_primary.get(first_on.port)
        others = [session for session in sessions if session is not first]
        if first is not None and others:
            return url, [first, others[0]]
    raise AssertionError(f"60 sessions, none on two primaries as asked: {list(by_primary)}")


def test_a_frozen_node_fails_only_the_sessions_it_holds(valkey_cluster, start_replica):
    """One primary frozen (SIGSTOP: it accepts and never answers), for less than the cluster's
    node timeout: the sessions on the other primaries keep their pages; only that node's
    circuit opens. Before, the worker's one circuit opened on the frozen node's timeouts and
    refused every page for its cool-down (about two thirds of all page views)."""
    url, [(node, frozen), (_, healthy)] = sessions_on_two_primaries(
        valkey_cluster, start_replica, "frozen-node"
    )
    statuses: dict[str, Counter[int]] = {"frozen": Counter(), "healthy": Counter()}
    os.kill(node.pid, signal.SIGSTOP)
    try:
        until = time.monotonic() + 3  # the cluster's node timeout is 5 s: no failover
        while time.monotonic() < until:
            for name, browser in (("frozen", frozen), ("healthy", healthy)):
                statuses[name][browser.get(f"{url}/", timeout=10).status_code] += 1
    finally:
        os.kill(node.pid, signal.SIGCONT)
    print(f"\none primary frozen for 3 s: page views {statuses}")
    assert set(statuses["healthy"]) == {200}
    assert statuses["frozen"][503] > 0  # the node was frozen, and its sessions told so
    # Once the node answers again, its sessions' pages are back within the cool-down.
    wait_until(lambda: frozen.get(f"{url}/", timeout=10).status_code == 200, 5, "the frozen node")


@pytest.mark.parametrize("frozen", ["another node", "the endpoint"])
def test_a_frozen_primary_the_cluster_failed_over_serves_its_sessions_from_the_new_one(
    valkey_cluster, start_replica, frozen
):
    """One primary frozen for good (SIGSTOP: a host gone, packets dropped): once the cluster has
    promoted its replica, the sessions it held are served by the new primary within seconds,
    their messages intact, and take saves again; the other primaries' sessions are served all
    along. Before, their commands kept going down the frozen node's connection (it never
    refuses, never redirects): 503 until the pod restarted. Also when the frozen node is the
    one the app was given as its endpoint, of which the slot map is asked first. (In the first
    second, before the worker next asks the frozen node its role, its page views are 200, from
    the worker's cached copy of the unchanged session.)"""
    url, [(node, moved), (_, healthy)] = sessions_on_two_primaries(
        valkey_cluster,
        start_replica,
        "failed-over",
        first_on=valkey_cluster.nodes[0 if frozen == "the endpoint" else 1],
    )
    replica = valkey_cluster.replica_of(node)
    token = csrf_token(browse(url, moved))
    statuses: Counter[int] = Counter()
    os.kill(node.pid, signal.SIGSTOP)
    try:
        # Pages go on meanwhile: the worker is to find its way through its own failures.
        def promoted() -> bool:
            statuses[moved.get(f"{url}/", timeout=10).status_code] += 1
            assert healthy.get(f"{url}/", timeout=10).status_code == 200
            return replica.role() == "master"

        wait_until(promoted, 30, "the cluster to promote the frozen primary's replica")
        promoted_at = time.monotonic()
        wait_until(
            lambda: moved.get(f"{url}/", timeout=10).status_code == 200,
            5,
            "the failed-over session's page from the new primary",
        )
        print(
            f"\nuntil the promotion: page views {statuses}; the page was back "
            f"{time.monotonic() - promoted_at:.2f} s after it"
        )
        saved = post_save(url, moved.cookies.get_dict(), token, "after the failover")
        listed = listed_messages(browse(url, moved))
    finally:
        os.kill(node.pid, signal.SIGCONT)
    assert statuses[503] > 0  # the node was frozen, and its session told so
    assert saved == 303
    assert listed[-1] == "after the failover" and len(listed) == 2, listed


def test_readiness_reports_redis_again_once_its_default_node_is_gone(valkey_cluster, start_replica):
    """/readyz (200 whatever Redis says, by design) reports on Redis through the cluster
    client's default node. That node frozen for good, and no session traffic to tell the worker
    anything: once the cluster has promoted its replica, /readyz reports Redis ok again. Before,
    it said unavailable for as long as the node stayed frozen."""
    url = start_replica(valkey_cluster.port, "readiness", WEB_CONCURRENCY="1").url
    # The app's cluster client picks its default node as this one does (the first primary of
    # the endpoint's slot map).
    guide = RedisCluster(host=HOST, port=valkey_cluster.port)
    try:
        default = guide.get_default_node()
    finally:
        guide.close()
    node = next(n for n in valkey_cluster.nodes if n.port == default.port)
    replica = valkey_cluster.replica_of(node)
    assert _redis_reported(url) == "ok"
    os.kill(node.pid, signal.SIGSTOP)
    try:
        wait_until(lambda: _redis_reported(url) == "unavailable", 10, "the probe to notice")
        wait_until(lambda: replica.role() == "master", 30, "the cluster to promote the replica")
        wait_until(lambda: _redis_reported(url) == "ok", 5, "/readyz to report Redis ok again")
    finally:
        os.kill(node.pid, signal.SIGCONT)


def _redis_reported(url: str) -> str:
    response = requests.get(f"{url}/readyz", timeout=10)
    assert response.status_code == 200
    return response.json()["redis"]


def test_the_cluster_client_reloads_its_slot_map_when_told(shared_cluster):
    """The one private redis-py name app/connection.py's reload_slot_map uses still works."""
    client = RedisCluster(host=HOST, port=shared_cluster.port)
    try:
        with mock.patch.object(
            NodesManager, "initialize", autospec=True, side_effect=NodesManager.initialize
        ) as initialize:
            reload_slot_map(client, failed=client.get_default_node().name)
    except (AttributeError, TypeError) as exc:
        raise AssertionError(
            "redis-py's cluster client no longer has nodes_manager.initialize as it was: "
            "app/connection.py (reload_slot_map) must find the new way to reload the slot map, "
            f"or a frozen primary's sessions stay 503 after the cluster fails it over ({exc})"
        ) from exc
    finally:
        client.close()
    initialize.assert_called_once()


def test_a_save_that_loads_its_script_waits_for_no_other_node(valkey_cluster, start_replica):
    """A node without the save script (restarted, or a replica just promoted: SCRIPT LOAD is not
    replicated) gets it loaded, and only it: before, the script went to every primary, and a
    save on a healthy node waited for a frozen one, answered 503 and opened the healthy node's
    circuit."""
    url, [(frozen_node, _), (healthy_node, healthy)] = sessions_on_two_primaries(
        valkey_cluster, start_replica, "script-load"
    )
    token = csrf_token(browse(url, healthy))
    healthy_node.client().script_flush()
    os.kill(frozen_node.pid, signal.SIGSTOP)
    try:
        saved = post_save(url, healthy.cookies.get_dict(), token, "with its script loaded again")
        pages = Counter(healthy.get(f"{url}/", timeout=10).status_code for _ in range(5))
    finally:
        os.kill(frozen_node.pid, signal.SIGCONT)
    print(f"\nsave needing its script, another primary frozen: {saved}; then pages {pages}")
    assert saved == 303
    assert pages == {200: 5}
    assert "with its script loaded again" in listed_messages(browse(url, healthy))


def refused_start(tmp_path: Path, name: str, port: int, **env: str) -> Gunicorn:
    """gunicorn whose start-up is refused: it has exited by itself (its output in ``log()``)."""
    server = Gunicorn(name, replica_env(port, "refused", **env), tmp_path / f"{name}.log")
    server.refused()
    return server


def test_an_acl_user_is_accepted_and_a_wrong_password_refused_at_start(
    valkey_cluster, start_replica, tmp_path
):
    told_false = refused_start(tmp_path, "told-false", valkey_cluster.port, REDIS_CLUSTER="false")
    assert "REDIS_CLUSTER=false, but Redis at" in told_false.log()
    assert told_false.process.returncode != 0

    for node in valkey_cluster.nodes:
        client = node.client()
        client.execute_command("ACL", "SETUSER", "app", "on", ">app-password", "~*", "+@all")
        # From now on, only the app user gets in without the admin password.
        client.execute_command("ACL", "SETUSER", "default", "resetpass", ">admin-password")

    url = start_replica(
        valkey_cluster.port, "acl", REDIS_USERNAME="app", REDIS_AUTH_TOKEN="app-password"
    ).url
    browser = requests.Session()
    token = csrf_token(browse(url, browser))
    assert start_session(url, browser, token, "as app") == 303
    assert listed_messages(browse(url, browser)) == ["as app"]

    refused = refused_start(
        tmp_path,
        "refused",
        valkey_cluster.port,
        REDIS_USERNAME="app",
        REDIS_AUTH_TOKEN="not-the-password",
    )
    assert refused.process.returncode != 0
    errors = [line for line in refused.log().splitlines() if "configuration error" in line]
    assert len(errors) == 1, refused.log()
    assert "refused app" in errors[0] and "REDIS_AUTH_TOKEN" in errors[0]
    assert "Traceback" not in refused.log()


def test_a_worker_booted_while_its_credentials_are_refused_takes_the_masters_answer(
    valkey_cluster, settings
):
    """REDIS_CLUSTER=auto: the master found a cluster; then the app user's password changed on
    the server, and a worker was replaced meanwhile (an OOM kill), which could not ask. It took
    one primary for its whole life: once the password was put back, every save whose session
    hashed to another primary's slot answered 503 (MOVED; found by review: 18 of 30). It takes
    the master's answer instead, and recovers without a restart."""

    nodes = [node.client() for node in valkey_cluster.nodes]
    for node in nodes:
        add_user(node, "app-password")
    app_settings = replace(
        settings,
        redis_port=valkey_cluster.port,
        redis_cluster=Switch.AUTO,
        redis_username=USER,
        redis_auth_token="app-password",
    )
    assert check_server(app_settings)  # the master, at start-up
    for node in nodes:
        change_password(node, "changed-on-the-server")
    app = create_app(app_settings)  # a worker booted now
    for node in nodes:
        change_password(node, "app-password")

    def saves() -> Counter[int]:
        return Counter(save(app.test_client(), f"m{n}").status_code for n in range(30))

    wait_until(lambda: saves() == Counter({303: 30}), 15, "saves to every primary's slots")


def test_where_client_tracking_is_refused_pages_are_never_stale(valkey, start_replica):
    valkey.client().execute_command("ACL", "SETUSER", "default", "-client|tracking")
    # One worker each, so that the worker that read the page is the one asked again.
    first = start_replica(valkey.port, "first", WEB_CONCURRENCY="1")
    second = start_replica(valkey.port, "second", WEB_CONCURRENCY="1")
    browser = requests.Session()
    token = csrf_token(browse(first.url, browser))
    assert start_session(first.url, browser, token, "m0") == 303
    cookies = browser.cookies.get_dict()
    for i in range(1, 4):
        assert listed_messages(browse(first.url, browser)) == [f"m{j}" for j in range(i)]
        assert post_save(second.url, cookies, token, f"m{i}") == 303
        # The first replica read the session before this save: it must not show that copy.
        assert listed_messages(browse(first.url, browser)) == [f"m{j}" for j in range(i + 1)]
    assert first.log().count("refuses CLIENT TRACKING") == 1


def test_redis_commands_per_request_on_a_cluster(shared_cluster, start_replica):
    valkey_cluster = flushed(shared_cluster)
    url = start_replica(valkey_cluster.port, "counted", WEB_CONCURRENCY="1").url
    browser = requests.Session()
    token = csrf_token(browse(url, browser))
    assert start_session(url, browser, token, "warm") == 303
    browse(url, browser)

    # Connected once, so that this test's own handshakes are not counted.
    primaries = [n.client() for n in valkey_cluster.nodes if n.role() == "master"]

    def counts() -> Counter[str]:
        total: Counter[str] = Counter()
        for client in primaries:
            for name, stats in client.info("commandstats").items():
                total[name.removeprefix("cmdstat_")] += stats["calls"]
        return total

    def per_run(before: Counter[str], runs: int) -> dict[str, float]:
        # INFO is this test's own; REPLCONF the replicas' acknowledgements (each replica sends
        # one a second), which land in the window now and then: neither is the app's. ROLE is
        # the worker's failover check, at most once a second per node it reads from.
        changed = counts() - before
        ignored = ("info", "replconf", "role")
        return {k: v / runs for k, v in changed.items() if k not in ignored}

    before = counts()
    for _ in range(10):
        browse(url, browser)
    per_view = per_run(before, 10)
    before = counts()
    for i in range(10):
        assert post_save(url, browser.cookies.get_dict(), token, f"m{i}") == 303
        browse(url, browser)
    per_save = per_run(before, 10)
    print(f"\ncluster: redis commands per GET /: {per_view}; per save + GET: {per_save}")
    # The read cache, on a cluster too: one tracked connection per primary.
    assert per_view == {}
    # One round trip (EVALSHA, the rest inside the script); the worker that saved keeps its
    # cached copy current, so the page it redirects to reads nothing.
    assert per_save == {"evalsha": 1, "hget": 1, "hmget": 1, "hset": 1, "expire": 1, "exists": 1}


def test_a_session_a_redirected_save_started_is_not_cached_where_nothing_tracks_it(
    valkey_cluster, settings, monkeypatch
):
    """A new session's first save meets its slot moving (ASK): the cluster client stores it on
    the target, and the worker's own connection to the slot's node never read the key, so no
    invalidation would reach a copy of it. Before, the worker cached what it had stored anyway,
    and kept showing the session after it was gone from Redis (expired, evicted, destroyed
    elsewhere) for up to the cache's 10 s. (Found by review.)"""
    sid = sessions.new_sid()
    monkeypatch.setattr(messages, "new_sid", lambda: sid)  # so that its slot is known
    key = store.session_key(sid)
    source = valkey_cluster.primary_for(key)
    target = next(n for n in valkey_cluster.nodes[:3] if n is not source)
    slot = int(source.client().execute_command("CLUSTER", "KEYSLOT", key))
    app = create_app(replace(settings, redis_port=valkey_cluster.port, redis_client_cache=True))
    user = app.test_client()
    token = csrf_token(user.get("/").get_data(as_text=True))
    start_moving(slot, source, target)
    saved = user.post("/persistMessage", data={"message": "hello", "csrf_token": token})
    assert saved.status_code == 303
    importing = target.client(single_connection_client=True)  # ASKING holds per connection
    assert importing.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 1  # stored there
    importing.execute_command("ASKING")
    assert importing.delete(key) == 1  # gone: what this worker shows must say so
    assert listed_messages(user.get("/").get_data(as_text=True)) == []


def test_a_new_sessions_copy_stays_with_the_node_that_took_its_first_save(
    valkey_cluster, settings, monkeypatch
):
    """The slot map is reloaded (a thread of its own does it) right after a new session's first
    save, with its slot handed to another primary meanwhile. The copy the worker keeps of what it
    stored belongs to the node whose connection took the save, the one that tracks the key. Filed
    under the slot's new node instead, whose connection never read the key, it was served there,
    and a change made there afterwards never reached it: the page listed the session after it
    was gone, for up to the cache's 10 s. (Found by review.)"""
    sid = sessions.new_sid()
    key = store.session_key(sid)
    source = valkey_cluster.primary_for(key)
    target = next(n for n in valkey_cluster.nodes[:3] if n is not source)
    slot = int(source.client().execute_command("CLUSTER", "KEYSLOT", key))
    # Another session, on the target, saved first: the worker's connection to the target is
    # up and tracking (a connection made anew drops what the cache holds for its node).
    candidates = (sessions.new_sid() for _ in range(1000))  # each lands there one time in 3
    neighbour = next(
        s for s in candidates if valkey_cluster.primary_for(store.session_key(s)) is target
    )
    new_sids = iter([neighbour, sid])
    monkeypatch.setattr(messages, "new_sid", lambda: next(new_sids))  # so that slots are known
    app = create_app(replace(settings, redis_port=valkey_cluster.port, redis_client_cache=True))
    save(app.test_client(), "next door")
    redis_client = app.extensions["redis"]
    run_script = redis_client.script

    def script_then_reshard(operation: str, *args, **kwargs):
        answer = run_script(operation, *args, **kwargs)
        if operation == "save":  # the slot moves on, and the map is reloaded, in between
            start_moving(slot, source, target)
            move_keys(slot, source, target)
            hand_over(valkey_cluster, slot, source, target)
            reload_slot_map(redis_client.pooled)
        return answer

    monkeypatch.setattr(redis_client, "script", script_then_reshard)
    user = app.test_client()
    token = csrf_token(user.get("/").get_data(as_text=True))
    saved = user.post("/persistMessage", data={"message": "hello", "csrf_token": token})
    assert saved.status_code == 303
    assert valkey_cluster.primary_for(key) is target
    assert target.client().delete(key) == 1  # gone: what this worker shows must say so
    assert listed_messages(user.get("/").get_data(as_text=True)) == []


def test_a_worker_that_starts_while_the_endpoint_is_down_answers_503s_then_serves(
    valkey_cluster, start_replica
):
    """The node the app was given as its endpoint is down when a worker starts (the one before
    was killed, as an out-of-memory kill does). redis-py's cluster client connects as it is
    made, so the worker failed to boot, and a worker that fails to boot stops gunicorn
    altogether: the pod was down until the node came back, and its restarts with it. Now the
    worker boots, answers 503s that say to try again and its probes 200, and serves once the
    node answers again. (Found by review.)"""
    server = start_replica(
        valkey_cluster.port, "endpoint-down", WEB_CONCURRENCY="1", REDIS_CLUSTER="true"
    )
    url = server.url
    browser = requests.Session()
    assert start_session(url, browser, csrf_token(browse(url, browser))) == 303
    endpoint = valkey_cluster.nodes[0]
    assert endpoint.port == valkey_cluster.port
    endpoint.stop()
    try:
        (worker,) = server.worker_pids()
        os.kill(worker, signal.SIGKILL)
        wait_until(lambda: server.worker_pids() - {worker}, 10, "gunicorn to start a worker")
        server.wait_ready("/healthz", 30)  # raises, with gunicorn's log, if gunicorn stopped
        page = browser.get(f"{url}/", timeout=10)
        assert page.status_code == 503
        assert page.headers.get("Retry-After") == "5"
        assert "try again in a few seconds" in page.text
        assert requests.get(f"{url}/readyz", timeout=10).json()["redis"] == "unavailable"
    finally:
        endpoint.start()
    wait_until(
        lambda: browser.get(f"{url}/", timeout=10).status_code == 200, 30, "the page once back"
    )
    assert listed_messages(browse(url, browser)) == ["first"]
    assert server.process.poll() is None
