"""`python -m bench.memory`: a worker's memory (RSS) as it serves more and more sessions at the
byte budget.

Two gunicorn workers (the pod's configuration) on one Valkey. One session is filled through the
app's endpoints to just under the 256 KiB budget (131 messages of 2,000 characters); it is then
copied in Redis (DUMP and RESTORE under the key of a new session id, named by the app's own
``session_key``) as often as the table needs, so that hundreds of such sessions cost seconds to
make. Each session is then viewed three times, round-robin, on fresh connections (so both
workers serve each of them); after each step the RSS of both workers is read from /proc.
tests/system/test_memory.py asserts the bound of issue 19 with the same code.
"""

from __future__ import annotations

import argparse
import contextlib
import secrets
import sys
import tempfile
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

import redis

from app.store import session_key
from bench import progress_log
from bench.client import PageClient
from bench.variants import bench_valkey, our_app, serving

FILL_MESSAGES = 131  # of FILL_LENGTH characters: 262,000 bytes, just under 256 KiB
FILL_LENGTH = 2000
VIEWS = 3
STEPS = (0, 300, 600)
SUMMARY = (
    "two gunicorn workers on one Valkey; sessions filled to the 256 KiB byte budget, each viewed "
    "three times; RSS of each worker from /proc"
)


@dataclass(frozen=True)
class MemoryStep:
    sessions: int  # sessions at the byte budget served so far, each viewed VIEWS times
    rss_mb: tuple[float, ...]  # each worker's resident memory, MB (10^6 bytes)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024 / 1e6
    raise RuntimeError(f"no VmRSS for process {pid}")


def fill_text(index: int) -> str:
    return (f"{index:04d} " + "full session " * (FILL_LENGTH // 13 + 1))[:FILL_LENGTH]


def measure(
    port: int,
    worker_pids: Callable[[], Collection[int]],
    admin: redis.Redis,
    steps: tuple[int, ...],
    log: Callable[[str], None],
) -> list[MemoryStep]:
    """Serve ``steps[-1]`` full sessions in batches on the app at ``port`` (whose Redis
    ``admin`` reaches); the RSS of its workers (``worker_pids``) after each step."""
    template = PageClient(port, timeout=30)
    template.get_page()
    for index in range(FILL_MESSAGES):
        template.save(fill_text(index))
    dump = admin.dump(session_key(template.cookies["session"]))
    # Warm both workers (imports, template cache, connections) on small pages first.
    for _ in range(20):
        PageClient(port).get_page()
    workers = sorted(worker_pids())
    results: list[MemoryStep] = []
    served = 0
    for target in steps:
        sids = [secrets.token_urlsafe(32) for _ in range(target - served)]
        for sid in sids:
            admin.restore(session_key(sid), 1_800_000, dump)
        for _ in range(VIEWS):
            for sid in sids:
                visitor = PageClient(port, timeout=30)
                visitor.cookies["session"] = sid
                status, page, _ = visitor.request("GET", "/")
                if status != 200 or len(page) < FILL_MESSAGES * FILL_LENGTH:
                    raise RuntimeError(f"a full session's page answered {status}, {len(page)} B")
        served = target
        if sorted(worker_pids()) != workers:
            raise RuntimeError("a worker was replaced during the run (out of memory?)")
        step = MemoryStep(served, tuple(rss_mb(pid) for pid in workers))
        log(f"{served} full sessions: worker RSS {', '.join(f'{m:.1f}' for m in step.rss_mb)} MB")
        results.append(step)
    return results


def run(workdir: Path, steps: tuple[int, ...], log: Callable[[str], None]) -> list[MemoryStep]:
    logs = workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    server = bench_valkey(workdir / "redis-memory")
    with (
        serving(server, lambda port: our_app(port, 0, logs, name="app-memory")) as app,
        contextlib.closing(server.client()) as admin,
    ):
        return measure(app.port, app.worker_pids, admin, steps, log)


def render(steps: list[MemoryStep]) -> str:
    base = steps[0]
    lines = [
        "| full sessions served (each viewed 3 times) | worker RSS MB | growth since 0, MB |",
        "|---:|---|---|",
    ]
    for step in steps:
        rss = ", ".join(f"{m:.1f}" for m in step.rss_mb)
        grown = ", ".join(f"{m - b:+.1f}" for m, b in zip(step.rss_mb, base.rss_mb, strict=True))
        lines.append(f"| {step.sessions} | {rss} | {grown} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__)
    parser.add_argument("--steps", type=int, nargs="+", default=list(STEPS))
    args = parser.parse_args(argv)

    log = progress_log("memory")

    with tempfile.TemporaryDirectory(prefix="bench-memory-") as workdir:
        print(render(run(Path(workdir), tuple(args.steps), log)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
