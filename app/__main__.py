"""`python -m app`: the app on http://127.0.0.1:8080 for local development.

With REDIS_HOST unset it starts an embedded Valkey (data in ./.local-data); with it set, it
uses that server. Either way it runs gunicorn with the repository's gunicorn.conf.py, bound
to loopback; extra arguments go to gunicorn (e.g. `python -m app --bind 127.0.0.1:9000`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from gunicorn.app.wsgiapp import run

from . import logs

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("LOCAL_DATA_DIR", ROOT / ".local-data"))


def main() -> None:
    if os.environ.get("METRICS_PORT", "").strip() != "0" and not os.environ.get(
        "PROMETHEUS_MULTIPROC_DIR"
    ):
        # prometheus_client chooses its multiprocess mode when first imported, which `-m app`
        # did before gunicorn.conf.py could name the directory: start again with it named.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(DATA_DIR / "metrics")
        (DATA_DIR / "metrics").mkdir(parents=True, exist_ok=True)
        os.execv(sys.executable, [sys.executable, "-m", "app", *sys.argv[1:]])  # noqa: S606
    logs.configure(os.environ.get("LOG_LEVEL", "INFO").upper())
    server = None
    if not os.environ.get("REDIS_HOST", "").strip():
        from .embedded import local_secret_key, start_valkey

        server = start_valkey(DATA_DIR)
        os.environ["REDIS_HOST"] = server.host
        os.environ["REDIS_PORT"] = str(server.port)
        os.environ.setdefault("SECRET_KEY", local_secret_key(DATA_DIR))
        logs.logging.getLogger("app").info(
            "REDIS_HOST is unset: started an embedded Valkey on %s:%s, data in %s",
            server.host,
            server.port,
            DATA_DIR,
        )
    sys.argv = [
        "gunicorn",
        "-c",
        str(ROOT / "gunicorn.conf.py"),
        "--bind",
        "127.0.0.1:8080",
        *sys.argv[1:],
        "app:create_app()",
    ]
    try:
        run()
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
