"""Processes by PID: CPU time, a master's children, holding one to a CPU, stopping one politely
then firmly."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process, from /proc: unlike req/s on a shared 2-core
    machine, CPU time per request barely moves when other work competes for the cores."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child_pids(parent: int) -> set[int]:
    """The PIDs of the processes whose parent is ``parent`` (a gunicorn or nginx master's
    workers), from every process's stat in /proc: /proc/PID/task/TID/children lists only one
    thread's children."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        # The command name (field 2) is in parentheses and may hold spaces.
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
            found.add(int(entry.name))
    return found


def pin_to_cpu(pid: int, cpu: int) -> None:
    """Every thread of process ``pid`` on CPU ``cpu`` (os.sched_setaffinity moves one thread
    only); the threads and children it starts later inherit it."""
    subprocess.run(
        ["taskset", "-a", "-p", "-c", str(cpu), str(pid)],
        check=True,
        capture_output=True,
        timeout=10,
    )


def stop_process(
    process: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 30
) -> int | None:
    """Send ``sig`` and wait up to ``timeout`` s; then SIGKILL the process's own group (a
    launcher here starts each server in a new session, so that is the server and its workers,
    nothing else), or the process alone if it shares a group. Returns the exit code."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                if os.getpgid(process.pid) == process.pid:  # its own group: workers too
                    os.killpg(process.pid, signal.SIGKILL)
                else:
                    process.kill()
            process.wait(5)
    return process.returncode
