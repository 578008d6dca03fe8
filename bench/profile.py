"""`python -m bench --profile`: where one app worker spends its time under the benchmark's load.

py-spy samples a running gunicorn worker from outside, so the app runs unmodified with the same
settings as in the benchmark. For each request type (page view, save) it prints the functions
with the most inclusive and self time, and keeps py-spy's raw collapsed stacks (and an SVG
flame graph) in the work directory for a closer look.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from bench.pages import message_text
from bench.variants import bench_valkey, our_app, serving, sessions_with_messages
from bench.wrk import Request, run_wrk
from localservers import REPO_ROOT

FRAME_RE = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]+)(?::\d+)?\)$")
TOP = 25


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).exists():
        raise RuntimeError("py-spy is missing: pip install py-spy")
    return found


def profile(duration: int, workdir: Path, log: Callable[[str], None]) -> str:
    logs = workdir / "logs"
    logs.mkdir(exist_ok=True)
    report: list[str] = []
    server = bench_valkey(workdir / "redis-profile")
    with serving(server, lambda port: our_app(port, 0, logs, name="app-profile")) as app:
        visitor = sessions_with_messages(app.port, 1, 10)[0]
        savers = sessions_with_messages(app.port, 64, 10)
        targets = {
            "page": (app.url + "/", [Request("GET", visitor.cookie_header)]),
            "save": (
                app.url + "/persistMessage",
                [Request("POST", c.cookie_header, c.save_body(message_text(1))) for c in savers],
            ),
        }
        worker = min(app.worker_pids())
        for name, (url, requests) in targets.items():
            log(f"profiling worker {worker} for {name} ({duration} s under wrk)")
            raw = workdir / f"profile-{name}.txt"
            svg = workdir / f"profile-{name}.svg"
            load = threading.Thread(
                target=run_wrk, args=(url, requests, duration + 2, workdir / name)
            )
            (workdir / name).mkdir()
            load.start()
            for fmt, out in (("raw", raw), ("flamegraph", svg)):
                subprocess.run(
                    [
                        py_spy(),
                        "record",
                        "--pid",
                        str(worker),
                        "--duration",
                        str(max(1, duration // 2)),
                        "--rate",
                        "200",
                        # Only samples holding the GIL: on a saturated 2-core box wall-clock
                        # samples pile up wherever the scheduler preempts the worker (socket
                        # writes that wake wrk or Valkey), which hides the real Python cost.
                        "--gil",
                        "--format",
                        fmt,
                        "--output",
                        str(out),
                    ],
                    check=True,
                    capture_output=True,
                    timeout=duration + 60,
                )
            load.join(timeout=duration + 60)
            report.append(summarize(name, raw, svg))
    return "\n".join(report)


def summarize(name: str, raw: Path, svg: Path) -> str:
    """Inclusive and self sample shares per function from py-spy's collapsed stacks (GIL-holding
    samples only, so waits on sockets and for the next request are not in the total)."""
    inclusive: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        frames = [_label(frame) for frame in stack.split(";")]
        count = int(count_text)
        total += count
        for label in set(frames):
            inclusive[label] += count
        self_time[frames[-1]] += count
    lines = [f"## {name}: {total} busy samples (flame graph: {svg})", ""]
    for title, counter in (("inclusive", inclusive), ("self", self_time)):
        lines += [f"| {title} % | function |", "|---:|---|"]
        # Frames in every sample (gunicorn's arbiter and worker loop) say nothing: skip them.
        ranked = [(k, v) for k, v in counter.most_common() if v < total * 0.98][:TOP]
        for label, count in ranked:
            lines.append(f"| {100 * count / max(total, 1):.1f} | {label} |")
        lines.append("")
    return "\n".join(lines)


def _label(frame: str) -> str:
    """`func (path:line)` -> `func (short path)`: lines merged, paths relative to the repo or
    site-packages so the table stays readable."""
    match = FRAME_RE.match(frame.strip())
    if not match:
        return frame.strip()
    path = match.group("file")
    for root in (str(REPO_ROOT) + "/", "site-packages/", "lib/python3"):
        if root in path:
            path = path.split(root, 1)[1]
            break
    return f"{match.group('func')} ({path})"
