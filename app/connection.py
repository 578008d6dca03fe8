"""How the app connects to Redis: the client factory (one primary or a cluster), its timeouts
and retries, the start-up check of the server, and which error replies mean "never".

One set of options for every client the app makes (the session connections, the pooled client,
the rate limiter's), so that a failover or an outage costs the same wherever it is met. On a
cluster (ElastiCache cluster mode, ElastiCache Serverless) the pooled client is redis-py's
RedisCluster, which follows MOVED and ASK redirections and a shard's failover by itself. What the
app does with these clients when Redis misbehaves is app/redis_client.py's.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import redis
from redis.backoff import ExponentialBackoff
from redis.cluster import RedisCluster
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from .config import ConfigError, Settings, Switch
from .credentials import IamAuthError, credential_options, refusal

log = logging.getLogger(__name__)

T = TypeVar("T")

# Commands answer in well under a millisecond, so half a second means the server is stuck, and
# a connect that takes half a second means the address leads nowhere (TLS included: a handshake
# with ElastiCache takes milliseconds). Both bound what one request can wait on Redis, which is
# what keeps a worker (and the probes queued behind it) answering while Redis is frozen.
CONNECT_TIMEOUT_SECONDS = 0.5
SOCKET_TIMEOUT_SECONDS = 0.5
# A dropped connection (ElastiCache failover, idle timeout) costs a retry, not an error page.
# Only a dropped connection: a timeout means the server is stuck, and retrying it would multiply
# the wait (redis-py reconnects inside each retry, and the handshake waits its own timeout);
# nor a refused AUTH (``NoAuthRetry``). A retry re-sends the command, which is why every write
# the app makes is idempotent.
RETRIES = 2
# Below ElastiCache's idle `timeout` and any NAT idle timeout, so pooled connections are
# checked (PING) before use instead of failing mid-request.
HEALTH_CHECK_INTERVAL_SECONDS = 10

Client = redis.Redis | RedisCluster

# The error replies that mean the server will never run a command for us (renamed or
# disabled, or not allowed to this user): only these switch a feature off. Anything else
# (BUSY, LOADING, a timeout) is trouble of the moment, and the feature is tried again later.
_REFUSALS = ("unknown command", "unknown subcommand", "err unknown command")


def refused(exc: BaseException) -> bool:
    """Whether ``exc`` says the server refuses the command for good (not: is busy now)."""
    if isinstance(exc, NoPermissionError):
        return True
    return isinstance(exc, ResponseError) and str(exc).lower().startswith(_REFUSALS)


class NoAuthRetry(Retry):
    """redis-py's Retry, but for an authentication failure, which it would retry as the
    ConnectionError it subclasses: credentials refused now are refused a few milliseconds
    later too, and with IAM each retry signs a token again, asking the Pod Identity agent
    (credentials.py says what that may cost). Raised at once, it costs one 503 and the
    worker's cool-down instead."""

    def call_with_retry(
        self,
        do: Callable[[], T],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> T:
        def retryable(error: Exception) -> bool:
            if isinstance(error, AuthenticationError):
                return False
            return is_retryable is None or is_retryable(error)

        return super().call_with_retry(do, fail, retryable, with_failure_count)


def client_options(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """The options of every client the app makes, for redis.Redis and RedisCluster alike."""
    options: dict[str, Any] = {
        "host": settings.redis_host,
        "port": settings.redis_port,
        **credential_options(settings),
        "ssl": settings.redis_tls,
        "socket_connect_timeout": CONNECT_TIMEOUT_SECONDS,
        "socket_timeout": SOCKET_TIMEOUT_SECONDS,
        "socket_keepalive": True,
        "health_check_interval": HEALTH_CHECK_INTERVAL_SECONDS,
        "retry": NoAuthRetry(
            ExponentialBackoff(cap=0.25, base=0.02),
            RETRIES,
            supported_errors=(RedisConnectionError,),
        ),
    }
    options.update(overrides)
    return options


def connect(settings: Settings, cluster: bool = False, **overrides: Any) -> Client:
    """A client with bounded timeouts and redis-py's own retry with backoff.

    On a cluster, the same options apply to every node's connections; the retry is then the
    cluster client's, which also refreshes the slot map (MOVED, a failover) between attempts.
    """
    options = client_options(settings, **overrides)
    if not cluster:
        return redis.Redis(db=settings.redis_db, **options)
    # The configuration endpoint is a DNS name whose addresses follow the shards: keep it as
    # the place to ask for the slot map, rather than the node addresses it answered once.
    return RedisCluster(dynamic_startup_nodes=False, **options)


class MadeOnFirstUse(Generic[T]):
    """A client made on first use rather than at the worker's boot: a worker's cluster clients
    (the pooled one, and the rate limiter's storage, which makes its own).

    redis-py's RedisCluster asks for the slot map as it is made, and raises when no node it was
    given answers. Made at boot, that failure was the worker's, and a worker that fails to boot
    stops gunicorn altogether: a worker started while the endpoint is unreachable (one killed
    and replaced, a pod restarted) took the whole pod down, and kept it down. Made on first
    use, under the app's failure policy (``RedisClient.made``), it costs 503s and a cool-down
    instead, until the endpoint answers.
    """

    def __init__(self, make: Callable[[], T]) -> None:
        self._make = make
        self._lock = threading.Lock()
        self.made: T | None = None  # None until the first call that could make it

    def get(self) -> T:
        """The client, made now if need be (a cluster client raises RedisClusterException
        while no node it knows answers)."""
        client = self.made
        if client is None:
            with self._lock:
                client = self.made
                if client is None:
                    client = self.made = self._make()
        return client


def disconnect(client: Client) -> None:
    """Drop every pooled connection; the next command connects afresh."""
    if isinstance(client, RedisCluster):
        client.disconnect_connection_pools()
    else:
        client.connection_pool.disconnect()


def reload_slot_map(client: RedisCluster, failed: str | None = None) -> None:
    """Have the cluster client ask for the slot map now: of its endpoint, then of every node it
    knows, the node named ``failed`` (``host:port``) last; the first full answer wins.

    redis-py does this by itself when a command it sends meets a lost node or a redirection;
    the session commands go down the worker's own node connections (app/nodes.py), so a node
    that stops answering there tells the cluster client nothing. And redis-py asks only its
    endpoint (``dynamic_startup_nodes=False``, above), which may be the node that stopped.
    redis-py 8.1 offers no public call for it: this is the one place that uses
    ``nodes_manager.initialize``, and tests/system/test_cluster.py fails, naming this function,
    when an upgrade removes it or its two arguments.
    """
    known = [(node.host, node.port) for node in client.get_nodes()]
    client.nodes_manager.initialize(
        additional_startup_nodes_info=known, last_failed_node_name=failed
    )


# What INFO cluster told the master's ``check_server``, for the workers gunicorn forks from it
# (empty: the server gave no answer then).
_master_answer: list[bool] = []


def check_server(settings: Settings) -> bool:
    """Whether to use the cluster client; refuses start-up when Redis refuses our credentials.

    The gunicorn master's check (gunicorn.conf.py), made once: a wrong REDIS_USERNAME or
    REDIS_AUTH_TOKEN, or IAM credentials that cannot be had, stop start-up with one line
    instead of making every request a 503. The credentials are checked with a PING after the
    connection's AUTH, and only a refused AUTH counts: a user whose ACL refuses a command (PING
    or INFO, say ``-@dangerous``) has the right credentials, and what it may not run is the
    features' business (``refused``). REDIS_CLUSTER=auto then asks the server (``INFO
    cluster``): a server that cannot be reached now, or refuses INFO, is taken to be one
    primary, so that workers start (and answer 503s) during an outage, as they always have; a
    cluster's configuration endpoint should therefore say REDIS_CLUSTER=true. A server that
    contradicts true or false stops start-up (when it answers INFO).
    """
    wanted = settings.redis_cluster
    # Retries for timeouts too, here only: a worker that took a cluster for one primary
    # because of one slow answer would answer every request for another node's slot with a 503.
    probe = connect(settings, retry_on_error=[RedisTimeoutError])
    try:
        try:
            probe.ping()
        except AuthenticationError as exc:
            raise ConfigError(refusal(settings, exc)) from None
        except NoPermissionError:
            pass  # AUTH passed: the user may not run PING, which the app never needs
        except ResponseError as exc:
            if "WRONGPASS" in str(exc) or "AUTH" in str(exc):
                raise ConfigError(refusal(settings, exc)) from None
        except (RedisConnectionError, RedisTimeoutError):
            pass  # not answering now: _ask_cluster says so
        # Said only with auto: a setting of true or false is not guessed from it.
        enabled = _ask_cluster(probe, "assuming one primary" if wanted == Switch.AUTO else None)
    finally:
        probe.close()
    _master_answer[:] = [] if enabled is None else [enabled]
    cluster = (enabled or False) if wanted == Switch.AUTO else wanted == Switch.ON
    if enabled is not None and enabled != cluster:
        raise ConfigError(
            f"REDIS_CLUSTER={'true' if cluster else 'false'}, but Redis at {settings.redis_host}:"
            f"{settings.redis_port} is {'not ' if cluster else ''}a cluster: set it to auto"
        )
    if cluster and settings.redis_db != 0:
        raise ConfigError("REDIS_DB must be 0 on a cluster (a cluster has one database)")
    if cluster and settings.redis_wait_replicas == Switch.ON:
        raise ConfigError("REDIS_WAIT_REPLICAS=on is not supported on a cluster: use auto or off")
    return cluster


def worker_cluster_mode(settings: Settings) -> bool:
    """Whether a worker uses the cluster client; never refuses, never raises.

    The master checked the configuration and the credentials (``check_server``); a worker that
    raised here would fail to boot, and a worker that fails to boot stops gunicorn: a worker
    replaced (an OOM kill) while Redis refuses the credentials (a password changed, the Pod
    Identity agent down) took the whole pod down. So a worker asks only when REDIS_CLUSTER is
    auto (a master started during an outage could only guess, and a worker booted after Redis
    returned should not inherit that guess), and takes no answer with one warning: for the
    master's answer when it had one (else a worker booted while its credentials were refused
    would take a cluster for one primary for its whole life, every other slot a 503), for one
    primary when it had none. It boots: requests then answer 503 until Redis accepts the
    credentials again, and recover without a restart.
    """
    if settings.redis_cluster != Switch.AUTO:
        return settings.redis_cluster == Switch.ON
    if _master_answer:
        instead = "taking the master's answer: " + (
            "a cluster" if _master_answer[0] else "one primary"
        )
    else:
        instead = "assuming one primary"
    probe = connect(settings, retry_on_error=[RedisTimeoutError])
    try:
        answer = _ask_cluster(probe, instead)
    finally:
        probe.close()
    if answer is None:
        return bool(_master_answer and _master_answer[0])
    return answer


def _ask_cluster(probe: redis.Redis, instead: str | None) -> bool | None:
    """``INFO cluster``'s answer, or None when the server did not give one: said in one warning
    ending with what the caller does ``instead`` (no warning when that is None)."""
    try:
        return str(probe.info("cluster").get("cluster_enabled", 0)) == "1"
    except IamAuthError as exc:
        why = f"no IAM token could be signed ({exc})"
    except AuthenticationError as exc:
        why = f"Redis refuses the app's credentials ({exc})"
    except ResponseError as exc:  # NOPERM (an ACL without INFO), or INFO renamed or disabled
        why = f"the server refuses INFO cluster ({exc})"
    except (RedisConnectionError, RedisTimeoutError) as exc:
        why = f"Redis is not answering ({exc})"
    if instead is not None:
        log.warning("%s: %s", why, instead)
    return None
