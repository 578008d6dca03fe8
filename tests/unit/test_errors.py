"""Redis trouble and server faults: a short page, the right status, never a traceback."""

from __future__ import annotations

import re

import pytest
import redis

from app import metrics
from app.circuit import COOL_DOWN_SECONDS, Circuit
from app.replication import NotReplicated
from tests.support import csrf_token, listed_messages, save, session_keys

REASONS = metrics.UNAVAILABLE_REASONS


class Clock:
    """The circuit's clock, moved by the test: no test waits out a cool-down."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def pass_cool_down(self) -> None:
        self.now += COOL_DOWN_SECONDS


@pytest.fixture
def clock(app, monkeypatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(app.extensions["redis"], "circuit", Circuit(clock=clock))
    return clock


@pytest.fixture
def redis_down(fake_server, clock):
    """Make the fake Redis refuse connections (True) or accept them again (False); coming
    back, the worker's cool-down is over too."""

    def down(is_down: bool = True) -> None:
        fake_server.connected = not is_down
        if not is_down:
            clock.pass_cool_down()

    return down


def assert_unavailable(response):
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    page = response.get_data(as_text=True)
    assert "Temporarily unavailable" in page
    assert "Traceback" not in page


def test_opening_a_session_while_redis_is_down_answers_503(client, redis_down):
    save(client, "kept")
    redis_down()
    assert_unavailable(client.get("/"))
    redis_down(False)
    response = client.get("/")
    assert response.status_code == 200
    assert "kept" in response.get_data(as_text=True)


def test_saving_while_redis_is_down_answers_503_and_then_works(client, redis_down):
    token = csrf_token(client.get("/").get_data(as_text=True))
    redis_down()
    assert_unavailable(client.post("/persistMessage", data={"message": "x", "csrf_token": token}))
    redis_down(False)
    response = client.post("/persistMessage", data={"message": "x", "csrf_token": token})
    assert response.status_code == 303


def test_destroy_while_redis_is_down_answers_503_and_keeps_the_session(client, redis_down):
    save(client, "kept")
    token = csrf_token(client.get("/").get_data(as_text=True))
    sid = client.get_cookie("session").value
    # The session opens (cached in this request), then Redis goes away before the DEL.
    store = client.application.session_interface.store
    real_delete = store.delete

    def delete_while_down(store_id):
        redis_down()
        return real_delete(store_id)

    store.delete = delete_while_down
    assert_unavailable(client.post("/destroy", data={"csrf_token": token}))
    redis_down(False)
    assert client.get_cookie("session").value == sid
    assert "kept" in client.get("/").get_data(as_text=True)


def test_a_first_visit_needs_no_redis(client, redis_down):
    redis_down()
    response = client.get("/")
    assert response.status_code == 200
    assert "Save Message" in response.get_data(as_text=True)


def test_an_unexpected_error_shows_a_page_not_a_traceback(app):
    @app.get("/boom")
    def boom():
        raise RuntimeError("bug")

    response = app.test_client().get("/boom")
    assert response.status_code == 500
    page = response.get_data(as_text=True)
    assert "Something went wrong on our side" in page
    assert "RuntimeError" not in page
    assert "Traceback" not in page


def test_redis_errors_raised_outside_views_become_503(app, client, monkeypatch):
    """Flask hands an error raised after the view, in save_session, to the 500 handler."""
    save(client, "kept")
    token = csrf_token(client.get("/").get_data(as_text=True))
    interface = app.session_interface
    real_save_session = interface.save_session

    def save_session_with_redis_gone(*args, **kwargs):
        real_save_session(*args, **kwargs)
        raise redis.ConnectionError("gone while the session was being written")

    monkeypatch.setattr(interface, "save_session", save_session_with_redis_gone)
    assert_unavailable(client.post("/destroy", data={"csrf_token": token}))
    assert_unavailable(client.get("/"))


def test_while_redis_is_away_requests_fail_at_once_until_a_cool_down_has_passed(
    client, app, redis_down, clock, monkeypatch
):
    save(client, "kept")
    client.get("/")
    redis_client = app.extensions["redis"]
    calls = []
    real_run = redis_client.run
    monkeypatch.setattr(
        redis_client,
        "run",
        lambda op, call, *circuit: real_run(op, lambda: calls.append(op) or call(), *circuit),
    )
    redis_down()
    clock.pass_cool_down()  # the node's role is due again: the next page asks Redis
    assert_unavailable(client.get("/"))
    assert len(calls) == 1  # the first failure: the full attempt
    for _ in range(3):
        assert_unavailable(client.get("/"))
    assert len(calls) == 1  # then nothing reaches Redis during the cool-down
    clock.pass_cool_down()
    assert_unavailable(client.get("/"))
    assert len(calls) == 2  # one trial after the cool-down, which fails: another cool-down
    assert_unavailable(client.get("/"))
    assert len(calls) == 2
    redis_down(False)  # Redis is back, and the cool-down over
    response = client.get("/")
    assert response.status_code == 200  # the first request after that succeeds
    assert "kept" in response.get_data(as_text=True)


@pytest.mark.parametrize(
    ("error", "reason", "retry_after", "says"),
    [
        (redis.ConnectionError("refused"), "unreachable", "5", "try again in a few seconds"),
        (redis.TimeoutError("slow"), "unreachable", "5", "try again in a few seconds"),
        (redis.ReadOnlyError("failover"), "unreachable", "5", "try again in a few seconds"),
        (
            redis.exceptions.ClusterDownError("The cluster is down"),
            "unreachable",
            "5",
            "try again in a few seconds",
        ),
        (
            redis.exceptions.MasterDownError("Link with MASTER is down"),
            "unreachable",
            "5",
            "try again in a few seconds",
        ),
        (
            redis.exceptions.TryAgainError("reshard"),
            "unreachable",
            "5",
            "try again in a few seconds",
        ),
        (redis.exceptions.ClusterError("TTL exhausted"), "unreachable", "5", "in a few seconds"),
        (redis.ResponseError("BUSY Valkey is busy"), "unreachable", "5", "in a few seconds"),
        (NotReplicated("no replica"), "not_replicated", "5", "again in a few seconds"),
        (
            redis.exceptions.OutOfMemoryError("OOM command not allowed"),
            "out_of_memory",
            None,
            "the message store is full",
        ),
        (redis.AuthenticationError("WRONGPASS"), "error", "5", "cannot sign in"),
        (redis.ResponseError("ERR unknown"), "error", None, "went wrong on our side"),
    ],
    ids=[
        "connection",
        "timeout",
        "readonly",
        "clusterdown",
        "masterdown",
        "tryagain",
        "cluster-ttl",
        "busy",
        "not-replicated",
        "oom",
        "auth",
        "response",
    ],
)
def test_a_503_says_what_is_true_and_counts_its_reason(
    client, app, monkeypatch, error, reason, retry_after, says
):
    """Trying again soon is offered only where it can help; every 503 counts its reason."""
    token = csrf_token(client.get("/").get_data(as_text=True))

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(app.extensions["messages"], "save", fail)
    before = {r: metrics.UNAVAILABLE_RESPONSES.labels(r)._value.get() for r in REASONS}
    response = client.post("/persistMessage", data={"message": "x", "csrf_token": token})
    after = {r: metrics.UNAVAILABLE_RESPONSES.labels(r)._value.get() for r in REASONS}
    page = response.get_data(as_text=True)
    assert response.status_code == 503
    assert response.headers.get("Retry-After") == retry_after
    assert says in page
    assert ("few seconds" in page) == (retry_after is not None)
    assert {r: after[r] - before[r] for r in REASONS} == {r: int(r == reason) for r in REASONS}


@pytest.mark.parametrize("first", [True, False], ids=["new-session", "stored-session"])
def test_a_save_a_replica_did_not_confirm_is_stored_once_when_sent_again(
    client, app, fake_redis, monkeypatch, first
):
    """The 503 says to send the form again and that it is never stored twice: for a first save
    too, whose session exists only once the script has run, the 503 carries its cookie."""
    if not first:
        save(client, "earlier")
    page = client.get("/").get_data(as_text=True)
    form = {"message": "unconfirmed", "csrf_token": csrf_token(page)}
    form["save_id"] = re.search(r'name="save_id" value="([^"]+)"', page).group(1)
    store = app.session_interface.store
    real_save = store.save

    def stored_but_not_confirmed(*args, **kwargs):
        real_save(*args, **kwargs)
        raise NotReplicated("no replica confirmed the save in time")

    monkeypatch.setattr(store, "save", stored_but_not_confirmed)
    response = client.post("/persistMessage", data=form)
    assert response.status_code == 503
    assert "again in a few seconds" in response.get_data(as_text=True)
    monkeypatch.setattr(store, "save", real_save)
    assert client.post("/persistMessage", data=form).status_code == 303
    listed = listed_messages(client.get("/").get_data(as_text=True))
    assert listed == (["unconfirmed"] if first else ["earlier", "unconfirmed"])
    assert len(session_keys(fake_redis)) == 1  # no second session holding another copy
