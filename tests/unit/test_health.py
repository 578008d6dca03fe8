"""Probes: liveness never touches Redis, readiness reports it, neither creates a session."""

from __future__ import annotations


def test_healthz_answers_without_redis(client, fake_redis):
    fake_redis.connection_pool.connection_kwargs["server"].connected = False
    client.set_cookie("session", "some-session-id")  # would make a session open read Redis
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


def test_readyz_reports_redis(client, fake_redis):
    response = client.get("/readyz")
    assert (response.status_code, response.get_json()) == (200, {"status": "ready", "redis": "ok"})


def test_probes_create_no_session(client, fake_redis):
    for path in ("/healthz", "/readyz", "/healthz"):
        response = client.get(path)
        assert "Set-Cookie" not in response.headers
    assert fake_redis.keys("*") == []
