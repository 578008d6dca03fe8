"""Several replicas of the app started together, for a test or a whole module (module-scoped
fixtures share one fleet where the tests leave it as they found it)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

from localservers.gunicorn import Gunicorn, start_together, stop_together
from tests.support import replica_env


@contextlib.contextmanager
def replica_fleet(
    valkey_port: int, names: Sequence[str], log_dir: Path, **env: str
) -> Iterator[list[Gunicorn]]:
    """gunicorns with the production config on loopback, one per name, started together;
    stopped together at the end."""
    fleet = [
        Gunicorn(name, replica_env(valkey_port, name, **env), log_dir / f"{name}.log")
        for name in names
    ]
    start_together(fleet)
    try:
        yield fleet
    finally:
        stop_together(fleet)
