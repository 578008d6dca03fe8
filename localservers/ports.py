"""Ports on loopback: one to hand a server that must be told its port, the one a process
bound to port 0 was given, and the sockets a process listens on."""

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


def socket_inodes(pid: int) -> set[str]:
    """The inodes of the sockets process ``pid`` holds open (none once it is gone)."""
    inodes = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    except OSError:
        return set()
    return inodes


def listening_sockets(pid: int) -> dict[int, tuple[str, str]]:
    """The TCP sockets process ``pid`` holds open and listening, by port: (address, inode).

    Read from /proc, in the process's own network namespace; the address as text ("0.0.0.0",
    "127.0.0.1", "::").
    """
    inodes = socket_inodes(pid)
    found = {}
    for family, table in ((socket.AF_INET, "tcp"), (socket.AF_INET6, "tcp6")):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                address, port = fields[1].split(":")
                # The kernel prints each 32-bit word of the address in host byte order.
                raw = b"".join(
                    bytes.fromhex(address[i : i + 8])[::-1] for i in range(0, len(address), 8)
                )
                found[int(port, 16)] = (socket.inet_ntop(family, raw), fields[9])
    return found


def listening_port(pid: int, besides: Collection[int] = ()) -> int | None:
    """The TCP port process ``pid`` listens on, read from /proc (for servers bound to port 0).

    ``besides``: ports to ignore, such as the gunicorn master's metrics port.
    """
    return next((port for port in listening_sockets(pid) if port not in besides), None)
