"""Ports on loopback: one to hand a server that must be told its port, and the one a process
bound to port 0 was given."""

from __future__ import annotations

import contextlib
import os
import random
import socket
from collections.abc import Collection
from pathlib import Path

from localservers import HOST


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


_EPHEMERAL = _ephemeral_range()
# Below the kernel's ephemeral range: no bind(0) and no outgoing connection anywhere on this
# machine is ever given one of these, so a port found free here stays free until the server
# binds it, and while a server restarts on it. Only another run picking the same random number
# at the same moment could collide; the launchers that can retry on EADDRINUSE do so.
_PRIVATE_PORTS = range(max(1024, _EPHEMERAL[0] - 12_000), _EPHEMERAL[0])
_handed_out: set[int] = set()
_random = random.SystemRandom()


def free_port() -> int:
    """A loopback TCP port for a server that cannot bind port 0 and report the one it got.

    Prefer binding port 0 and ``listening_port`` where the server allows it (gunicorn does).
    """
    for _ in range(500):
        port = _random.choice(_PRIVATE_PORTS)
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind((HOST, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port in {_PRIVATE_PORTS}")


def listening_port(pid: int, besides: Collection[int] = ()) -> int | None:
    """The TCP port process ``pid`` listens on, read from /proc (for servers bound to port 0).

    ``besides``: ports to ignore, such as the gunicorn master's metrics port.
    """
    inodes = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    except OSError:
        return None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        port = int(fields[1].split(":")[1], 16)
        if fields[3] == "0A" and fields[9] in inodes and port not in besides:  # 0A: LISTEN
            return port
    return None
