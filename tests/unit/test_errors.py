"""Redis trouble and server faults: a short page, the right status, never a traceback."""

from __future__ import annotations

import pytest
import redis

from app import metrics
from app.store import NotReplicated
from tests.support import csrf_token, save

REASONS = metrics.UNAVAILABLE_REASONS


@pytest.fixture
def redis_down(fake_redis):
    server = fake_redis.connection_pool.connection_kwargs["server"]

    def down(is_down: bool = True) -> None:
        server.connected = not is_down

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


def test_while_redis_is_away_a_request_checks_once_instead_of_retrying(
    client, app, redis_down, monkeypatch
):
    save(client, "kept")
    client.get("/")  # the first read of a session also asks the node's role (once a second)
    store = app.extensions["message_store"]
    reads, pings = [], []
    real_get, real_ping = store.reads.fields, store.ping
    monkeypatch.setattr(store.reads, "fields", lambda key: reads.append(key) or real_get(key))
    monkeypatch.setattr(store, "ping", lambda: pings.append(1) or real_ping())
    redis_down()
    assert_unavailable(client.get("/"))
    assert (len(reads), len(pings)) == (1, 0)  # the first failure: the full attempt
    assert_unavailable(client.get("/"))
    assert (len(reads), len(pings)) == (1, 1)  # then one quick PING, no read
    redis_down(False)
    response = client.get("/")
    assert response.status_code == 200  # the first request after Redis returns succeeds
    assert "kept" in response.get_data(as_text=True)
    assert (len(reads), len(pings)) == (2, 2)
    client.get("/")
    assert len(pings) == 2  # back to normal: no more PINGs


@pytest.mark.parametrize(
    ("error", "reason", "retry_after", "says"),
    [
        (redis.ConnectionError("refused"), "unreachable", "5", "try again in a few seconds"),
        (redis.TimeoutError("slow"), "unreachable", "5", "try again in a few seconds"),
        (redis.ReadOnlyError("failover"), "unreachable", "5", "try again in a few seconds"),
        (NotReplicated("no replica"), "not_replicated", "5", "again in a few seconds"),
        (
            redis.exceptions.OutOfMemoryError("OOM command not allowed"),
            "out_of_memory",
            None,
            "the message store is full",
        ),
        (redis.AuthenticationError("WRONGPASS"), "error", None, "went wrong on our side"),
        (redis.ResponseError("ERR unknown"), "error", None, "went wrong on our side"),
    ],
    ids=["connection", "timeout", "readonly", "not-replicated", "oom", "auth", "response"],
)
def test_a_503_says_what_is_true_and_counts_its_reason(
    client, app, monkeypatch, error, reason, retry_after, says
):
    """Trying again soon is offered only where it can help; every 503 counts its reason."""
    token = csrf_token(client.get("/").get_data(as_text=True))

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(app.session_interface, "append_message", fail)
    before = {r: metrics.UNAVAILABLE_RESPONSES.labels(r)._value.get() for r in REASONS}
    response = client.post("/persistMessage", data={"message": "x", "csrf_token": token})
    after = {r: metrics.UNAVAILABLE_RESPONSES.labels(r)._value.get() for r in REASONS}
    page = response.get_data(as_text=True)
    assert response.status_code == 503
    assert response.headers.get("Retry-After") == retry_after
    assert says in page
    assert ("few seconds" in page) == (retry_after is not None)
    assert {r: after[r] - before[r] for r in REASONS} == {r: int(r == reason) for r in REASONS}
