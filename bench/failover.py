"""`python -m bench.failover`: saves through two failovers, with REDIS_WAIT_REPLICAS at its default.

The app (two gunicorn workers, as in the pod) reaches a primary and its replica through a
switchable endpoint (``localservers.endpoint``, standing in for ElastiCache's primary endpoint);
one client saves steadily, a new message after each answer, on fresh connections.

* **No replica left**: the primary is lost for good, its only replica promoted and the endpoint
  moved to it; the new primary has no replica to confirm a save (on ElastiCache, until a
  replacement has synced: minutes). How soon saves answer 303 again, how many answered 503 in
  the seconds after, and how many were counted as saved without a replica.
* **Promote, then demote**: the replica is promoted and the endpoint moved, but the old primary
  keeps taking writes on the connections it has for 0.3 s before it is made a replica: how many
  acknowledged saves are then missing from the session.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families

from bench import progress_log
from bench.client import PageClient
from bench.variants import our_app
from localservers.endpoint import SwitchableProxy
from localservers.gunicorn import Gunicorn
from localservers.valkey import Valkey
from localservers.waits import wait_until
from ops.page import parse_page

DEMOTED_AFTER = 0.3  # the old primary's writes after the promotion, in the second case


@dataclass(frozen=True)
class Windows:
    """How long the client saves before the failover (saves the replica confirmed) and after
    it (measured); ``together`` runs the two cases side by side instead of one after the other."""

    before: float = 3.0
    after: float = 8.0
    together: bool = False


# The published run.
FULL = Windows()
# tests/system/test_bench.py: saves answer 303 again within 5 s of the switch, so 5.5 s after
# it shows whether they do (a full run's first 303 comes after 0.15-0.3 s); a second of saves
# before is still dozens; the two cases, on servers of their own, run side by side.
SMOKE = Windows(before=1.0, after=5.5, together=True)
SUMMARY = (
    "two gunicorn workers reaching a primary and its replica through a switchable endpoint, "
    "REDIS_WAIT_REPLICAS=auto, one client saving steadily; no replica left: the primary lost "
    "for good, its replica promoted; promote, then demote: the old primary takes writes for "
    "0.3 s after the promotion"
)


class Saver(threading.Thread):
    """One client saving a new message after each answer until stopped."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.client = PageClient(port, timeout=30)
        self.answers: list[tuple[float, int, str]] = []  # (at, status, text)
        self.halt = threading.Event()

    def run(self) -> None:
        number = 0
        while not self.halt.is_set():
            number += 1
            text = f"save {number}"
            try:
                self.client.get_page()
                status, _, _ = self.client.request(
                    "POST", "/persistMessage", self.client.save_body(text)
                )
            except (OSError, RuntimeError):
                status = 0  # a 503 page for the form, or no answer
            self.answers.append((time.monotonic(), status, text))
            if status != 303:
                time.sleep(0.05)  # a user reading the 503 page, then saving again

    def stop(self) -> None:
        self.halt.set()
        self.join(60)


@dataclass(frozen=True)
class FailoverRun:
    case: str
    after_s: float  # the seconds measured after the switch
    saved_before: int
    first_303_s: float | None  # after the switch
    answered_503: int  # in the after_s seconds after the switch
    answered_303: int
    lost: int  # acknowledged but not listed afterwards
    without_replica: float  # messageapp_saves_without_replica_total during the run


def _replicating(directory: Path) -> Valkey:
    """A Valkey that replicates at once (diskless, no delay) and keeps nothing on disk."""
    server = Valkey(
        directory, appendonly="no", repl_diskless_sync="yes", repl_diskless_sync_delay="0"
    )
    server.start()
    return server


def _counted(app: Gunicorn) -> float:
    text = requests.get(f"http://127.0.0.1:{app.env['METRICS_PORT']}/metrics", timeout=5).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "messageapp_saves_without_replica_total":
                return sample.value
    return 0.0


@contextlib.contextmanager
def _pair(workdir: Path, name: str) -> Iterator[tuple[Valkey, Valkey, SwitchableProxy, Gunicorn]]:
    """A primary, its replica in sync, the endpoint on the primary, and the app on the endpoint."""
    primary = _replicating(workdir / f"{name}-primary")
    replica = _replicating(workdir / f"{name}-replica")
    endpoint = SwitchableProxy(primary.port)
    app = our_app(endpoint.port, 0, workdir, name=f"app-{name}")
    try:
        replica.replicate(primary)
        wait_until(lambda: replica.in_sync_with(primary), 20, "the replica to sync")
        app.start()
        yield primary, replica, endpoint, app
    finally:
        app.stop()
        endpoint.close()
        primary.stop()
        replica.stop()


def _run(
    workdir: Path,
    case: str,
    fail: Callable[[Valkey, Valkey, SwitchableProxy], None],
    windows: Windows,
) -> FailoverRun:
    with _pair(workdir, case.split()[0]) as (primary, replica, endpoint, app):
        counted = _counted(app)
        saver = Saver(app.port)
        saver.start()
        time.sleep(windows.before)
        failing = time.monotonic()
        fail(primary, replica, endpoint)
        switched = time.monotonic()  # the endpoint leads to the new primary from now on
        time.sleep(max(0.0, switched + windows.after - time.monotonic()))
        saver.stop()
        without_replica = _counted(app) - counted
        listed: set[str] = set()
        reader = PageClient(app.port, timeout=30)
        reader.cookies = dict(saver.client.cookies)
        wait_until(lambda: _listed_into(reader, listed), 30, "the session to be read")
    acknowledged = [text for _, status, text in saver.answers if status == 303]
    after = [(at - switched, status) for at, status, _ in saver.answers if at > switched]
    first = next((at for at, status in after if status == 303), None)
    return FailoverRun(
        case,
        windows.after,
        saved_before=sum(1 for at, s, _ in saver.answers if at <= failing and s == 303),
        first_303_s=first,
        answered_503=sum(1 for _, status in after if status != 303),
        answered_303=sum(1 for _, status in after if status == 303),
        lost=sum(1 for text in acknowledged if text not in listed),
        without_replica=without_replica,
    )


def _listed_into(reader: PageClient, listed: set[str]) -> bool:
    try:
        listed.update(parse_page(reader.get_page()).messages)
    except RuntimeError:
        return False  # a 503 while the worker cools down
    return True


def _no_replica_left(primary: Valkey, replica: Valkey, endpoint: SwitchableProxy) -> None:
    primary.stop()  # lost for good
    replica.replicate(None)
    endpoint.switch(replica.port)


def _promote_then_demote(primary: Valkey, replica: Valkey, endpoint: SwitchableProxy) -> None:
    replica.replicate(None)
    endpoint.switch(replica.port)
    time.sleep(DEMOTED_AFTER)  # the old primary still takes writes on its open connections
    primary.replicate(replica)


def run(workdir: Path, log: Callable[[str], None], windows: Windows = FULL) -> list[FailoverRun]:
    cases = (
        ("no replica left", _no_replica_left),
        ("promote, then demote 0.3 s later", _promote_then_demote),
    )

    def one(case: str, fail: Callable[[Valkey, Valkey, SwitchableProxy], None]) -> FailoverRun:
        log(f"failover: {case}")
        return _run(workdir, case, fail, windows)

    if not windows.together:
        return [one(case, fail) for case, fail in cases]
    with ThreadPoolExecutor(len(cases)) as pool:
        return list(pool.map(lambda pair: one(*pair), cases))


def render(runs: list[FailoverRun]) -> str:
    after = runs[0].after_s
    lines = [
        "| failover | saves before | first 303 after the switch | "
        f"503 in the {after:g} s after | 303 in those | acknowledged but lost | "
        "counted without a replica |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        first = "none" if r.first_303_s is None else f"{r.first_303_s:.2f} s"
        lines.append(
            f"| {r.case} | {r.saved_before} | {first} | {r.answered_503} | {r.answered_303} | "
            f"{r.lost} | {r.without_replica:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    argparse.ArgumentParser(prog="python -m bench.failover", description=__doc__).parse_args(argv)

    log = progress_log("failover")

    with tempfile.TemporaryDirectory(prefix="bench-failover-") as workdir:
        print(render(run(Path(workdir), log)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
