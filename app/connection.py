"""How the app connects to Redis: timeouts, retries, and noticing that a node was demoted.

One policy for every client the app makes (writes, the read cache, the readiness probe, the
rate limiter), so that a failover or an outage costs the same wherever it is met.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from .config import Settings

log = logging.getLogger(__name__)

# A dropped connection (ElastiCache failover, idle timeout) costs a retry, not an error page.
# Commands answer in well under a millisecond, so half a second means the server is stuck;
# redis-py retries the handshake inside each command retry, so a server that accepts
# connections but never answers costs up to (RETRIES + 1)^2 socket timeouts, ~4.5 s, before
# the first 503 (later requests then fail fast, see store._guarded). A retry re-sends the
# command, which is why every write the app makes is idempotent (see store.py).
CONNECT_TIMEOUT_SECONDS = 1.0
SOCKET_TIMEOUT_SECONDS = 0.5
RETRIES = 2
# Below ElastiCache's idle `timeout` and any NAT idle timeout, so pooled connections are
# checked (PING) before use instead of failing mid-request.
HEALTH_CHECK_INTERVAL_SECONDS = 10
# How often a worker asks the node it reads from whether it is still the primary. A demoted
# primary keeps its client connections and answers reads with stale data until it has resynced
# from the new primary; one ROLE a second per worker bounds that window to a second.
ROLE_CHECK_SECONDS = 1.0


def connect(settings: Settings, **overrides: Any) -> redis.Redis:
    """A pooled client with bounded timeouts and redis-py's own retry with backoff."""
    options: dict[str, Any] = {
        "host": settings.redis_host,
        "port": settings.redis_port,
        "db": settings.redis_db,
        "password": settings.redis_auth_token,
        "ssl": settings.redis_tls,
        "socket_connect_timeout": CONNECT_TIMEOUT_SECONDS,
        "socket_timeout": SOCKET_TIMEOUT_SECONDS,
        "socket_keepalive": True,
        "health_check_interval": HEALTH_CHECK_INTERVAL_SECONDS,
        "retry": Retry(ExponentialBackoff(cap=0.25, base=0.02), RETRIES),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
    }
    options.update(overrides)
    return redis.Redis(**options)


class RoleWatch:
    """Tells, at most once per ROLE_CHECK_SECONDS, whether a client's node was demoted.

    Where the server refuses ROLE (a managed service may rename or block it), says so once in
    the log and stops asking: reads then follow a failover when the node resyncs or the
    connection drops.
    """

    def __init__(self) -> None:
        self._next_check = 0.0
        self._enabled = True

    def due_now(self) -> None:
        """Check on the next call, whatever the interval (after a failover was seen)."""
        self._next_check = 0.0

    def demoted(self, client: redis.Redis) -> bool:
        now = time.monotonic()
        if not self._enabled or now < self._next_check:
            return False
        self._next_check = now + ROLE_CHECK_SECONDS
        try:
            role = client.execute_command("ROLE")
        except ResponseError as exc:
            log.warning("the server refuses ROLE (%s): failovers are noticed later", exc)
            self._enabled = False
            return False
        name = role[0].decode() if isinstance(role[0], bytes) else role[0]
        if name != "master":
            log.warning("the Redis node this worker reads from is now a %s: reconnecting", name)
            return True
        return False
