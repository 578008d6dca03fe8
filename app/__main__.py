"""`python -m app`: the app on http://127.0.0.1:8080 for local development.

With REDIS_HOST unset it starts an embedded Valkey (data in ./.local-data, or LOCAL_DATA_DIR,
which one `python -m app` at a time may use);
with it set, it uses that server. Either way it runs gunicorn with the repository's
gunicorn.conf.py, which reads every other setting, bound to loopback; extra arguments go to
gunicorn (e.g. `python -m app --bind 127.0.0.1:9000`, which then listens there instead).
"""

from __future__ import annotations

import fcntl
import logging
import os
import sys
from pathlib import Path
from typing import TextIO

from gunicorn.app.wsgiapp import run

from . import logs
from .config import ConfigError, Settings, is_set, local_data_dir
from .embedded import local_secret_key, start_valkey

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BIND = "127.0.0.1:8080"


def bind_arguments(arguments: list[str]) -> list[str]:
    """The default address, unless the arguments name one: gunicorn's ``--bind`` adds to a
    list, so passing ours as well would listen on both (and fail when 8080 is taken)."""
    for argument in arguments:
        if argument in ("-b", "--bind") or argument.startswith(("-b", "--bind=")):
            return []
    return ["--bind", DEFAULT_BIND]


def hold_data_dir(data_dir: Path) -> TextIO:
    """Take ``data_dir`` for this process (an exclusive lock on a file in it, released when the
    process ends), or exit with a message: a second `python -m app` on the same directory would
    start a second Valkey appending to the same file."""
    data_dir.mkdir(parents=True, exist_ok=True)
    lock = (data_dir / ".lock").open("a")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        sys.exit(
            f"another `python -m app` is using {data_dir}: stop it first, or give this one a "
            "directory of its own (LOCAL_DATA_DIR=...) and an address (--bind 127.0.0.1:PORT)"
        )
    return lock


def main() -> None:
    data_dir = local_data_dir()
    server = lock = None
    if not is_set("REDIS_HOST"):
        lock = hold_data_dir(data_dir)
        server = start_valkey(data_dir)
        os.environ.update(REDIS_HOST=server.host, REDIS_PORT=str(server.port))
    if not is_set("SECRET_KEY"):
        os.environ["SECRET_KEY"] = local_secret_key(data_dir)
    try:
        try:
            settings = Settings.from_env()
        except ConfigError as exc:
            sys.exit(f"configuration error: {exc}")
        if server is not None:
            logs.configure(settings.log_level)
            logging.getLogger("app").info(
                "REDIS_HOST is unset: started an embedded Valkey on %s:%s, data in %s",
                server.host,
                server.port,
                data_dir,
            )
        sys.argv = [
            "gunicorn",
            "-c",
            str(ROOT / "gunicorn.conf.py"),
            *bind_arguments(sys.argv[1:]),
            *sys.argv[1:],
            "app:create_app()",
        ]
        run()
    finally:
        if server is not None:
            server.stop()
        if lock is not None:
            lock.close()  # the directory is free again


if __name__ == "__main__":
    main()
