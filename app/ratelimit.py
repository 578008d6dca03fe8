"""Per-client limits on saves and on new sessions, counted in the sessions' own Redis.

Without them one client can create sessions as fast as the app answers and push every other
user's session out of Redis (eviction) or make every save fail (noeviction). The counting is
the `limits` library's (the engine of flask-limiter), through its public storage options: on
one primary its ``RedisStorage`` takes the app's own connection pool; on a cluster its
``RedisClusterStorage`` gets the app's client options (timeouts, retries, TLS, credentials).
Every count goes through the app's guarded client (app/redis_client.py), under its failover
policy. flask-limiter itself is not used because the new-session limit applies only to a save
that creates a session, which only the save knows, and because its hooks would run on every
page view, which these limits never touch. Each counter is one key, so no command of it
crosses cluster slots.

The client is the connection's peer address, or, when that peer is a trusted proxy
(FORWARDED_ALLOW_IPS, gunicorn's variable), the last address in X-Forwarded-For: the one that
proxy appended, as the pod's nginx reads it (real_ip_recursive off), so both count the same
client. Nothing before it is believed: a load balancer keeps whatever the client sent there,
and walking on past addresses inside a trusted network would reach it whenever the client
itself is in one (a pod, anything in the VPC; "*" or 0.0.0.0/0 trusts every address).
"""

from __future__ import annotations

import functools
import ipaddress
import math
import time
from dataclasses import dataclass

from flask import Request
from limits import RateLimitItem, parse_many
from limits.storage import RedisClusterStorage, RedisStorage
from limits.strategies import FixedWindowRateLimiter

from .config import Settings
from .connection import MadeOnFirstUse, client_options
from .redis_client import RedisClient


class Trusted:
    """The addresses of the proxies in front of the app, whose X-Forwarded-For is believed."""

    def __init__(self, entries: tuple[str, ...]) -> None:
        self._any = "*" in entries
        self._networks = [ipaddress.ip_network(e, strict=False) for e in entries if e != "*"]

    def __contains__(self, address: str) -> bool:
        if self._any:
            return True
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self._networks)

    def client_address(self, request: Request) -> str:
        address = request.remote_addr or "unknown"
        if address not in self:
            return address
        hops = [h.strip() for h in request.headers.get("X-Forwarded-For", "").split(",")]
        hops = [h for h in hops if h]
        return hops[-1] if hops else address


@dataclass(frozen=True)
class Refusal:
    reason: str
    retry_after: int  # seconds


class RateLimits:
    def __init__(self, settings: Settings, redis: RedisClient) -> None:
        self.trusted = Trusted(settings.forwarded_allow_ips)
        self._redis = redis
        self._saves = _items(settings.rate_limit_saves)
        self._new_sessions = _items(settings.rate_limit_new_sessions)
        # On a cluster, made on first use: limits' storage makes a cluster client of its own,
        # which connects as it is made (connection.MadeOnFirstUse says why not at boot).
        self._counting = MadeOnFirstUse(functools.partial(_counters, settings, redis))
        if not redis.cluster:
            self._counting.get()

    def check_save(self, request: Request) -> Refusal | None:
        """Count one save for this client; a Refusal when over a limit."""
        return self._hit(self._saves, "save", "saves", request)

    def check_new_session(self, request: Request) -> Refusal | None:
        """Count one new session for this client; a Refusal when over a limit."""
        return self._hit(self._new_sessions, "new-session", "new sessions", request)

    def _hit(
        self, items: list[RateLimitItem], kind: str, reason: str, request: Request
    ) -> Refusal | None:
        if not items:
            return None
        client = self.trusted.client_address(request)
        _, limiter = self._redis.made(self._counting)
        for item in items:
            # Through the circuit of the counter's node: on a cluster, a frozen node then fails
            # only the clients counted there.
            circuit = self._redis.circuit_for(self.counter_key(item, kind, client))
            if not self._redis.run(
                "rate_limit", lambda i=item: limiter.hit(i, kind, client), circuit
            ):
                stats = self._redis.run(
                    "rate_limit",
                    lambda i=item: limiter.get_window_stats(i, kind, client),
                    circuit,
                )
                return Refusal(reason, max(1, math.ceil(stats.reset_time - time.time())))
        return None

    def counter_key(self, item: RateLimitItem, kind: str, client: str) -> str:
        """The Redis key ``limits`` counts ``item`` for ``client`` in, from its public parts
        (tests/unit/test_ratelimit.py fails if ``limits`` names it otherwise)."""
        storage, _ = self._redis.made(self._counting)
        return storage.prefixed_key(item.key_for(kind, client))


def _counters(
    settings: Settings, redis: RedisClient
) -> tuple[RedisStorage, FixedWindowRateLimiter]:
    """limits' storage and its limiter."""
    storage = _storage(settings, redis)
    return storage, FixedWindowRateLimiter(storage)


def _storage(settings: Settings, redis: RedisClient) -> RedisStorage:
    if not redis.cluster:
        return RedisStorage("redis://", connection_pool=redis.pooled.connection_pool)
    options = client_options(settings)
    host, port = options.pop("host"), options.pop("port")
    storage = RedisClusterStorage(f"redis+cluster://{host}:{port}", **options)
    # Its own cluster client (limits takes no existing one): dropped with the app's.
    redis.also_drop(storage.storage)
    return storage


def _items(rate: str) -> list[RateLimitItem]:
    return [] if rate == "off" else parse_many(rate)
