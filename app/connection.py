"""How the app connects to Redis: one primary or a cluster, timeouts, retries, and noticing
that a node was demoted.

One policy for every client the app makes (writes, the read cache, the readiness probe, the
rate limiter), so that a failover or an outage costs the same wherever it is met. On a
cluster (ElastiCache cluster mode, ElastiCache Serverless) the client is redis-py's
RedisCluster, which follows MOVED and ASK redirections and a shard's failover by itself.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.cluster import RedisCluster
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from .config import ConfigError, Settings, Switch

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

Client = redis.Redis | RedisCluster


def connect(settings: Settings, cluster: bool = False, **overrides: Any) -> Client:
    """A pooled client with bounded timeouts and redis-py's own retry with backoff.

    On a cluster, the same options apply to every node's connections; the retry is then the
    cluster client's, which also refreshes the slot map (MOVED, a failover) between attempts.
    """
    options: dict[str, Any] = {
        "host": settings.redis_host,
        "port": settings.redis_port,
        "username": settings.redis_username,
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
    if not cluster:
        return redis.Redis(db=settings.redis_db, **options)
    # The cluster client retries connection errors and timeouts itself (and refreshes the
    # slot map in between); it has no per-error list.
    del options["retry_on_error"]
    # The configuration endpoint is a DNS name whose addresses follow the shards: keep it as
    # the place to ask for the slot map, rather than the node addresses it answered once.
    return RedisCluster(dynamic_startup_nodes=False, **options)


def disconnect(client: Client) -> None:
    """Drop every pooled connection; the next command connects afresh."""
    if isinstance(client, RedisCluster):
        client.disconnect_connection_pools()
    else:
        client.connection_pool.disconnect()


def check_server(settings: Settings) -> bool:
    """Whether to use the cluster client; refuses start-up when Redis refuses our credentials.

    REDIS_CLUSTER=auto asks the server (``INFO cluster``). A server that cannot be reached now
    is taken to be one primary, so that workers start (and answer 503s) during an outage, as
    they always have; a cluster's configuration endpoint should therefore say
    REDIS_CLUSTER=true. A server that contradicts true or false stops start-up. Every mode
    checks the credentials when the server answers, so that a wrong REDIS_USERNAME or
    REDIS_AUTH_TOKEN stops start-up with one line instead of making every request a 503.
    """
    wanted = settings.redis_cluster
    # With the usual retries: a worker that took a cluster for one primary because of one
    # reset connection would answer every request for another node's slot with a 503.
    probe = connect(settings)
    answered = False  # whether the server told us
    try:
        enabled = str(probe.info("cluster").get("cluster_enabled", 0)) == "1"
        answered = True
    except (AuthenticationError, NoPermissionError) as exc:
        who = settings.redis_username or "the default user"
        raise ConfigError(
            f"Redis at {settings.redis_host}:{settings.redis_port} refused {who} "
            f"({exc}): check REDIS_USERNAME and REDIS_AUTH_TOKEN"
        ) from None
    except ResponseError as exc:
        if "WRONGPASS" in str(exc) or "AUTH" in str(exc):
            raise ConfigError(
                f"Redis at {settings.redis_host}:{settings.redis_port} refused the "
                f"credentials ({exc}): check REDIS_USERNAME and REDIS_AUTH_TOKEN"
            ) from None
        enabled = wanted == Switch.ON
        if wanted == Switch.AUTO:
            log.warning("the server refuses INFO cluster (%s): using one primary", exc)
    except (RedisConnectionError, RedisTimeoutError) as exc:
        enabled = wanted == Switch.ON
        if wanted == Switch.AUTO:
            log.warning("Redis is not answering (%s): assuming one primary", exc)
    finally:
        probe.close()
    cluster = enabled if wanted == Switch.AUTO else wanted == Switch.ON
    if answered and enabled != cluster:
        raise ConfigError(
            f"REDIS_CLUSTER={'true' if cluster else 'false'}, but Redis at {settings.redis_host}:"
            f"{settings.redis_port} is {'not ' if cluster else ''}a cluster: set it to auto"
        )
    if cluster and settings.redis_db != 0:
        raise ConfigError("REDIS_DB must be 0 on a cluster (a cluster has one database)")
    if cluster and settings.redis_wait_replicas == Switch.ON:
        raise ConfigError("REDIS_WAIT_REPLICAS=on is not supported on a cluster: use auto or off")
    return cluster


class RoleWatch:
    """Tells, at most once per ROLE_CHECK_SECONDS, whether a client's node was demoted.

    Where the server refuses ROLE (a managed service may rename or block it), says so once in
    the log and stops asking: reads then follow a failover when the node resyncs or the
    connection drops.
    """

    def __init__(self, enabled: bool = True) -> None:
        self._next_check = 0.0
        # A cluster needs no check: a demoted node answers MOVED, and the client follows.
        self._enabled = enabled

    def due_now(self) -> None:
        """Check on the next call, whatever the interval (after a failover was seen)."""
        self._next_check = 0.0

    def demoted(self, client: Client) -> bool:
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
