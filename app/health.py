"""Probes for Kubernetes.

``/readyz`` stays 200 while Redis is away, by design: every replica shares the one Redis, so
failing readiness on a Redis blip would take every pod out of the load balancer at once
(the EKS best-practices guide warns against probes that depend on a shared service). The
pods keep answering, with a 503 page and Retry-After, and the body reports what Redis said.

Neither probe waits on Redis: ``/healthz`` never asks it, and ``/readyz`` asks through the
worker's circuit (app/circuit.py), which answers at once while Redis is known to be away. What
keeps them answering within the kubelet's timeout while Redis is frozen is that no request holds
a worker for long (one timed-out call per worker per cool-down), so a probe never queues behind
a stuck page view.
"""

from __future__ import annotations

from flask import Blueprint

from .context import current_redis

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@bp.get("/readyz")
def readyz() -> dict[str, str]:
    reachable = current_redis().ping()
    return {"status": "ready", "redis": "ok" if reachable else "unavailable"}
