"""The request body limits of the pod's nginx sidecar, written at its start from the app's own
setting: ``python -m app.proxy > /tmp/nginx/limits.conf``, which nginx.conf includes.

nginx must refuse exactly the bodies the app would refuse (``Settings.max_content_length``,
derived from MESSAGE_MAX_LENGTH) and hold every body it accepts in memory: a constant in
nginx.conf would drift from the setting, and nginx reads no environment variable in these
directives. The sidecar runs the app's image, so the one formula in app/config.py serves both.
"""

from __future__ import annotations

import sys

from .config import ConfigError, Settings, body_cap


def limits(cap: int) -> str:
    """nginx directives (http context) for a body cap of ``cap`` bytes."""
    return (
        "# Written at the proxy's start by `python -m app.proxy` (app/proxy.py) from\n"
        "# MESSAGE_MAX_LENGTH: the app's own body cap. Larger bodies are refused (413) from\n"
        "# their header; every body accepted fits one buffer, so none is written to disk.\n"
        f"client_max_body_size {cap};\n"
        f"client_body_buffer_size {cap};\n"
    )


def main() -> None:
    try:
        cap = body_cap(Settings.one_from_env("message_max_length"))
    except ConfigError as exc:
        sys.exit(f"configuration error: {exc}")
    sys.stdout.write(limits(cap))


if __name__ == "__main__":
    main()
