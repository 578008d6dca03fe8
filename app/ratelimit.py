"""Per-client limits on saves and on new sessions, counted in the sessions' own Redis.

Without them one client can create sessions as fast as the app answers and push every other
user's session out of Redis (eviction) or make every save fail (noeviction). The counting is
the `limits` library's (the engine of flask-limiter), on the app's own connection pool and
under its failover policy; flask-limiter itself is not used because the new-session limit
applies only to a save that creates a session, which only the view knows, and because its
hooks would run on every page view, which these limits never touch.

The client is the connection's peer address, or, when that peer is a trusted proxy
(FORWARDED_ALLOW_IPS, gunicorn's variable), the nearest address in X-Forwarded-For that is
not itself trusted: a client can prepend anything to that header, but not past our proxies.
"""

from __future__ import annotations

import ipaddress
import math
import time
from dataclasses import dataclass

from flask import Request
from limits import RateLimitItem, parse_many
from limits.storage import RedisStorage
from limits.strategies import FixedWindowRateLimiter

from .config import Settings
from .store import MessageStore


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
        for hop in reversed([h for h in hops if h]):
            address = hop
            if hop not in self:
                break
        return address


@dataclass(frozen=True)
class Refusal:
    reason: str
    retry_after: int  # seconds


class RateLimits:
    def __init__(self, settings: Settings, store: MessageStore) -> None:
        self.trusted = Trusted(settings.forwarded_allow_ips)
        self._store = store
        self._saves = _items(settings.rate_limit_saves)
        self._new_sessions = _items(settings.rate_limit_new_sessions)
        # The app's client: the same timeouts, retries, TLS and AUTH as every other command,
        # a cluster's included. `limits` builds its own client from a URI (a cluster one
        # from a list of nodes); the storage is given ours instead and its scripts registered
        # on it. Each counter is one key, so no command of it crosses slots.
        storage = RedisStorage("redis://")
        storage.storage = store.client
        storage.initialize_storage("redis://")
        self._limiter = FixedWindowRateLimiter(storage)

    def check_save(self, request: Request, creates_session: bool) -> Refusal | None:
        """Count one save (and one new session) for this client; a Refusal when over a limit."""
        client = self.trusted.client_address(request)
        if creates_session:
            refused = self._hit(self._new_sessions, "new-session", client)
            if refused is not None:
                return Refusal("new sessions", refused)
        refused = self._hit(self._saves, "save", client)
        return None if refused is None else Refusal("saves", refused)

    def _hit(self, items: list[RateLimitItem], kind: str, client: str) -> int | None:
        for item in items:
            if not self._store.call(lambda item=item: self._limiter.hit(item, kind, client)):
                stats = self._store.call(
                    lambda item=item: self._limiter.get_window_stats(item, kind, client)
                )
                return max(1, math.ceil(stats.reset_time - time.time()))
        return None


def _items(rate: str) -> list[RateLimitItem]:
    return [] if rate == "off" else parse_many(rate)
