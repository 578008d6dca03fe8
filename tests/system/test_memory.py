"""A worker's memory stays bounded however many large sessions it serves (issue 19, item 3).

Two real gunicorn workers on a real Valkey, sessions filled to the 256 KiB byte budget, each
viewed three times: the RSS of each worker is read from /proc before, after 300 and after 600
such sessions (the benchmark's own measurement, bench/memory.py). Growth in memory is the
behaviour under test here, not speed: without a bound in bytes each worker grew by ~40 MB per
300 sessions until the container's memory limit killed it.
"""

from __future__ import annotations

from bench.memory import measure
from tests.support import worker_pids

MB = 1.0  # bench.memory reports MB (10^6 bytes)


def test_worker_memory_stays_bounded_under_many_full_sessions(valkey, start_replica):
    replica = start_replica(valkey.port, "memory", WEB_CONCURRENCY="2")
    with valkey.client() as admin:
        steps = measure(
            replica.port, lambda: worker_pids(replica.process.pid), admin, (0, 300, 600), print
        )
    before, middle, after = (step.rss_mb for step in steps)
    for worker in range(2):
        print(
            f"\nworker {worker}: RSS {before[worker]:.1f} -> {middle[worker]:.1f} -> "
            f"{after[worker]:.1f} MB"
        )
        # At most 64 MB however many sessions (the cache holds 32 MiB of them)...
        assert after[worker] - before[worker] <= 64 * MB
        # ...and no more growth once it is full.
        assert after[worker] - middle[worker] <= 10 * MB
