"""Readiness against a real Valkey that goes away: the pod stays ready, the answer says so.

The probes on fakeredis: tests/unit/test_health.py.
"""

from __future__ import annotations

from dataclasses import replace

from app import create_app


def test_readyz_stays_ready_when_redis_is_away(settings, valkey):
    app = create_app(replace(settings, redis_port=valkey.port))
    valkey.stop()
    response = app.test_client().get("/readyz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ready", "redis": "unavailable"}
