"""Probes for Kubernetes.

``/readyz`` stays 200 while Redis is away, by design: every replica shares the one Redis, so
failing readiness on a Redis blip would take every pod out of the load balancer at once
(the EKS best-practices guide warns against probes that depend on a shared service). The
pods keep answering, with a 503 page and Retry-After, and the body reports what Redis said.
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
