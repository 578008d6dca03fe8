"""The servers being compared (the app, the stock flask-session anchor, the bare-Flask ceiling)
on the benchmark's Valkey, and how to fill them with sessions over plain HTTP."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

from bench.client import PageClient
from bench.pages import message_text
from localservers import HOST
from localservers.gunicorn import Gunicorn
from localservers.ports import free_port
from localservers.valkey import Valkey

# Shared by the app and the anchor so the only difference is the code under test; fresh per run.
SECRET_KEY = secrets.token_hex(32)
# The app refuses saves past MESSAGES_MAX_PER_SESSION (500 by default); the save rows push
# sessions past 500, so lift the cap for the benchmark only.
MESSAGES_MAX = "100000"


def bench_valkey(data_dir: Path) -> Valkey:
    """The benchmark's Valkey: no snapshots or AOF while measuring (disk I/O would add noise);
    the fault run saves explicitly before stopping (``stop(save=True)``), and the snapshot is
    loaded again on start."""
    return Valkey(data_dir, appendonly="no", save="")


def _env(redis_port: int, db: int, metrics: bool = False, cluster: bool = False) -> dict[str, str]:
    # gunicorn.conf.py validates the app's settings in the master, so every variant (the
    # ceiling too, which ignores them) gets a valid set: one settings file for all rows.
    return os.environ | {
        # Two workers for every variant, so only the app differs between rows.
        "WEB_CONCURRENCY": "2",
        # Said, not asked (auto): the cluster rows measure the cluster client, nothing else.
        "REDIS_CLUSTER": "true" if cluster else "auto",
        "REDIS_HOST": HOST,
        "REDIS_PORT": str(redis_port),
        "REDIS_DB": str(db),
        "SECRET_KEY": SECRET_KEY,
        "MESSAGES_MAX_PER_SESSION": MESSAGES_MAX,
        # Likewise the byte budget and the per-client rate limits: every bench client is one
        # address saving as fast as it can.
        "SESSION_MAX_BYTES": str(64 << 20),
        "RATE_LIMIT_SAVES": "off",
        "RATE_LIMIT_NEW_SESSIONS": "off",
        "REPLICA_NAME": "bench-replica",
        # Prometheus metrics for our app only (each server its own port); 0 turns them off.
        "METRICS_PORT": str(free_port()) if metrics else "0",
    }


def our_app(
    redis_port: int,
    db: int,
    logs: Path,
    name: str = "app",
    metrics: bool = True,
    cluster: bool = False,
) -> Gunicorn:
    return Gunicorn(name, _env(redis_port, db, metrics, cluster), logs / f"{name}.log")


def anchor_app(redis_port: int, db: int, logs: Path, name: str = "anchor") -> Gunicorn:
    env = _env(redis_port, db)
    return Gunicorn(name, env, logs / f"{name}.log", "bench.anchor_app:create_app()")


def ceiling_app(redis_port: int, logs: Path) -> Gunicorn:
    env = _env(redis_port, 15)
    return Gunicorn("ceiling", env, logs / "ceiling.log", "bench.ceiling_app:create_app()")


class Store(Protocol):
    """What a row needs of a session store: one Valkey or a ``ValkeyCluster``."""

    @property
    def port(self) -> int: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def cpu_seconds(self) -> float: ...


@contextlib.contextmanager
def serving(store: Store, make_app: Callable[[int], Gunicorn]) -> Iterator[Gunicorn]:
    """Start ``store``, then the app ``make_app`` builds for the store's port (known only once it
    runs: a node may move to another port), and stop both on the way out, the app first."""
    with contextlib.ExitStack() as stack:
        store.start()
        stack.callback(store.stop)
        app = make_app(store.port)
        stack.callback(app.stop)
        app.start()
        yield app


def sessions_with_messages(
    port: int, count: int, messages: int, threads: int = 4
) -> list[PageClient]:
    """`count` visitors, each having saved `messages` messages through the real endpoints, so the
    stored shape is exactly what the app writes (no knowledge of its Redis layout needed)."""

    def one(_: int) -> PageClient:
        client = PageClient(port)
        client.get_page()
        for index in range(messages):
            client.save(message_text(index))
        client.get_page()
        return client

    with ThreadPoolExecutor(min(threads, count)) as pool:
        return list(pool.map(one, range(count)))
