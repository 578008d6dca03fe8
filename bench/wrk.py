"""Run wrk with bench/report.lua and turn its done() JSON into a result."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent / "report.lua"
THREADS = 2
CONNECTIONS = 16


@dataclass(frozen=True)
class Request:
    """One request wrk sends; a list of them is sent round-robin. An empty path is the URL's."""

    method: str
    cookie: str
    body: str = ""
    path: str = ""


@dataclass
class WrkResult:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    status_errors: int
    socket_errors: int  # connect, read, write and timeout errors
    statuses: dict[int, int] = field(default_factory=dict)
    timeouts: int = 0  # of socket_errors: answers slower than wrk's timeout (2 s)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def wrk_binary() -> str:
    found = shutil.which("wrk")
    if not found:
        raise RuntimeError("wrk is missing: apt-get install -y wrk")
    return found


def run_wrk(
    url: str,
    requests: list[Request],
    duration: float,
    workdir: Path,
    count_statuses: bool = False,
    connections: int = CONNECTIONS,
    threads: int = THREADS,
    spread_clients: bool = False,
) -> WrkResult:
    """wrk -tT -cC -dD --latency with our Lua script; raises if wrk itself fails. With
    ``spread_clients``, each request names a client address of its own (report.lua; one
    request line only)."""
    if spread_clients and len(requests) != 1:
        raise ValueError("spread_clients sends one request line (report.lua)")
    request_file = workdir / "wrk-requests.tsv"
    lines = (f"{r.method}\t{r.path}\t{r.cookie}\t{r.body}\n" for r in requests)
    request_file.write_text("".join(lines))
    env = {
        **os.environ,
        "BENCH_REQUESTS": str(request_file),
        "BENCH_COUNT_STATUS": "1" if count_statuses else "0",
        "BENCH_SPREAD_CLIENTS": "1" if spread_clients else "0",
    }
    # wrk takes whole seconds at the least (units s, m, h), so 1 s is the shortest run.
    cmd = [
        wrk_binary(),
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--latency",
        "-s",
        str(SCRIPT),
        url,
    ]
    proc = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=duration + 60, check=False
    )
    line = next((x for x in proc.stdout.splitlines() if x.startswith("BENCH_JSON ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stdout}\n{proc.stderr}")
    data = json.loads(line.removeprefix("BENCH_JSON "))
    errors = data["errors"]
    return WrkResult(
        requests=data["requests"],
        seconds=data["duration_us"] / 1e6,
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        status_errors=errors["status"],
        socket_errors=errors["connect"] + errors["read"] + errors["write"] + errors["timeout"],
        statuses={int(k): v for k, v in data["statuses"].items()},
        timeouts=errors["timeout"],
    )
