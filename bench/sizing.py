"""`python -m bench.sizing`: what one pod sustains at its CPU limit, and what a session costs in
Redis; the inputs of docs/sizing.md, with the fleet table bench/fleet.py computes from them.

The pod as k8s/ deploys it: gunicorn with config.env's WEB_CONCURRENCY (and gunicorn.conf.py's
threads) behind the repository's nginx.conf, the app's container held to its CPU limit from
k8s/deployment.yaml and the sidecar to its own, on one Valkey. The limit is a CFS quota in a
cgroup of their own (what the kubelet sets: ``cpu.max`` on cgroup v2, ``cpu.cfs_quota_us`` on
v1) where the cpu controller is writable, else ``taskset`` to one CPU each (no fraction then).

The machine is shared, so req/s is only a cross-check: the figure that survives a loaded
machine is CPU seconds per request (the gunicorn master and workers, the nginx master and
workers, from /proc), and a pod's capacity is its limit divided by that. Page views go round
robin over more sessions than a run reaches twice within the read cache's 10 s, so each view
reads its session from Redis, as a view every 30 s in production does. Redis's side is counted
on the server: commands and bytes moved per request (INFO), and memory per session (INFO memory
over many copies of one session, MEMORY USAGE of one) for 1, 10 and 100 messages.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import redis
import yaml

from app.store import session_key
from bench import progress_log
from bench.client import PageClient
from bench.costs import NOT_THE_APPS, tally
from bench.fleet import CacheFigures, PodFigures, render_fleet
from bench.pages import message_text
from bench.plan import PAGE_MESSAGES
from bench.variants import bench_valkey, our_app
from bench.wrk import Request, run_wrk
from localservers import REPO_ROOT
from localservers.gunicorn import Gunicorn
from localservers.nginx import Nginx
from localservers.processes import cpu_seconds, pin_to_cpu

SESSION_SIZES = (1, 10, 100)
SAVES_PER_MIX = 10  # the mixed run: one save per this many page views
CGROUP_ROOT = Path("/sys/fs/cgroup")
SUMMARY = (
    "one pod as k8s/ deploys it (gunicorn with config.env's workers behind nginx.conf, each "
    "container held to its CPU limit), page views of sessions read from Redis, on one Valkey"
)


@dataclass(frozen=True)
class Pod:
    """What k8s/ gives one pod: CPU limits and requests (cores), the worker count, and the
    HPA's maximum of pods."""

    app_limit: float
    proxy_limit: float
    app_request: float
    proxy_request: float
    workers: int
    hpa_max: int


def _cores(text: str) -> float:
    return int(text.removesuffix("m")) / 1000 if text.endswith("m") else float(text)


def pod_shape(root: Path = REPO_ROOT) -> Pod:
    """Read from k8s/ (the deployment, config.env, the HPA), so the bench follows the manifests."""
    deployment = yaml.safe_load((root / "k8s" / "deployment.yaml").read_text())
    hpa = yaml.safe_load((root / "k8s" / "horizontalpodautoscaler.yaml").read_text())
    spec = deployment["spec"]["template"]["spec"]
    # The nginx sidecar is a native sidecar: an init container that keeps running.
    containers = {
        c["name"]: c["resources"] for c in spec.get("initContainers", []) + spec["containers"]
    }
    app, proxy = containers["app"], containers["proxy"]
    env = dict(
        line.split("=", 1)
        for line in (root / "k8s" / "config.env").read_text().splitlines()
        if line and not line.startswith("#")
    )
    return Pod(
        _cores(str(app["limits"]["cpu"])),
        _cores(str(proxy["limits"]["cpu"])),
        _cores(str(app["requests"]["cpu"])),
        _cores(str(proxy["requests"]["cpu"])),
        int(env["WEB_CONCURRENCY"]),
        int(hpa["spec"]["maxReplicas"]),
    )


class CpuLimit:
    """Processes held to ``cores`` CPUs: a CFS quota in a cgroup of their own if the cpu
    controller is writable here, else pinned to CPU ``fallback_cpu`` with taskset."""

    PERIOD_US = 100_000  # the kubelet's CFS period

    def __init__(self, name: str, cores: float, fallback_cpu: int) -> None:
        self.cores = cores
        self.fallback_cpu = fallback_cpu
        self.directory: Path | None = None
        quota = round(cores * self.PERIOD_US)
        v2, v1 = CGROUP_ROOT, CGROUP_ROOT / "cpu"
        group = f"bench-sizing-{os.getpid()}-{name}"
        with contextlib.suppress(OSError):
            if "cpu" in (v2 / "cgroup.subtree_control").read_text().split():
                (v2 / group).mkdir()
                self.directory = v2 / group
                (self.directory / "cpu.max").write_text(f"{quota} {self.PERIOD_US}")
                self.how = "cgroup v2 cpu.max"
                return
        with contextlib.suppress(OSError):
            (v1 / group).mkdir()
            self.directory = v1 / group
            (self.directory / "cpu.cfs_period_us").write_text(str(self.PERIOD_US))
            (self.directory / "cpu.cfs_quota_us").write_text(str(quota))
            self.how = "cgroup v1 cpu.cfs_quota_us"
            return
        self.remove()
        self.how = f"taskset to CPU {fallback_cpu} (no writable cpu cgroup; a whole CPU)"

    def adopt(self, pids: set[int]) -> None:
        """Move running processes in; their later children (a new worker) inherit the limit."""
        for pid in sorted(pids):
            if self.directory is not None:
                (self.directory / "cgroup.procs").write_text(str(pid))
            else:
                pin_to_cpu(pid, self.fallback_cpu)

    def throttled(self) -> int | None:
        """CFS periods in which the group used its whole quota (None with taskset)."""
        if self.directory is None:
            return None
        for line in (self.directory / "cpu.stat").read_text().splitlines():
            if line.startswith("nr_throttled "):
                return int(line.split()[1])
        return None

    def remove(self) -> None:
        """Remove the cgroup once its processes have exited (a cgroup with members cannot go)."""
        if self.directory is None:
            return
        for _ in range(50):
            try:
                self.directory.rmdir()
                break
            except OSError:
                time.sleep(0.1)
        self.directory = None


@dataclass(frozen=True)
class LoadRun:
    """One wrk run at the pod: requests, the CPU each side spent, what Redis did."""

    name: str
    requests: int
    seconds: float
    save_share: float  # of the requests, the share that were saves
    errors: int
    app_cpu_s: float
    proxy_cpu_s: float
    redis_cpu_s: float
    commands: float  # the app's, in total
    calls: dict[str, int]
    net_bytes: int  # into and out of Redis
    throttled: int | None  # CFS periods at the app's quota

    def per_request(self, total: float) -> float:
        return total / self.requests if self.requests else 0.0

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


@dataclass(frozen=True)
class SessionMemory:
    messages: int
    keys: int  # keys one session adds
    memory_usage: int  # MEMORY USAGE of its key
    used_memory: float  # INFO used_memory per session, over many copies


@dataclass(frozen=True)
class Sizing:
    pod: Pod
    limit_how: str
    page_bytes: int
    runs: list[LoadRun]
    sessions: list[SessionMemory]

    def run(self, name: str) -> LoadRun:
        return next(run for run in self.runs if run.name == name)

    def pod_figures(self) -> PodFigures:
        view, save = self.run("page views"), self.run("saves")
        return PodFigures(
            view_app_cpu=view.per_request(view.app_cpu_s),
            view_proxy_cpu=view.per_request(view.proxy_cpu_s),
            save_app_cpu=save.per_request(save.app_cpu_s),
            save_proxy_cpu=save.per_request(save.proxy_cpu_s),
            app_limit=self.pod.app_limit,
            proxy_limit=self.pod.proxy_limit,
            app_request=self.pod.app_request,
            proxy_request=self.pod.proxy_request,
            workers=self.pod.workers,
            page_bytes=self.page_bytes,
        )

    def cache_figures(self) -> CacheFigures:
        view, save = self.run("page views"), self.run("saves")
        return CacheFigures(
            session_bytes={s.messages: s.used_memory for s in self.sessions},
            view_commands=view.per_request(view.commands),
            view_bytes=view.per_request(view.net_bytes),
            save_commands=save.per_request(save.commands),
            save_bytes=save.per_request(save.net_bytes),
        )


class _Counters:
    """The app's Redis commands and bytes moved, read before and after a run."""

    def __init__(self, admin: redis.Redis) -> None:
        self.admin = admin

    def read(self) -> tuple[dict[str, int], int, int]:
        counted = tally([self.admin])
        stats = self.admin.info("stats")
        net = int(stats["total_net_input_bytes"]) + int(stats["total_net_output_bytes"])
        return dict(counted.calls), counted.total, net


def _copies(admin: redis.Redis, template: str, count: int) -> list[str]:
    """``count`` new session ids holding a copy of session ``template`` (DUMP and RESTORE under
    the app's own key for each): hundreds of sessions in a second, not minutes of saves."""
    dump = admin.dump(session_key(template))
    sids = [secrets.token_urlsafe(32) for _ in range(count)]
    with admin.pipeline(transaction=False) as pipe:
        for sid in sids:
            pipe.restore(session_key(sid), 1_800_000, dump)
        pipe.execute()
    return sids


def session_memory(port: int, admin: redis.Redis, messages: int, copies: int) -> SessionMemory:
    """A session saved through the app with ``messages`` messages; its memory, measured as
    MEMORY USAGE of its key and as INFO used_memory over ``copies`` copies of it."""
    keys_before = admin.dbsize()
    visitor = PageClient(port, timeout=30)
    visitor.get_page()
    for index in range(messages):
        visitor.save(message_text(index))
    sid = visitor.cookies["session"]
    keys = admin.dbsize() - keys_before
    usage = int(admin.execute_command("MEMORY USAGE", session_key(sid), "SAMPLES", "0"))
    before = int(admin.info("memory")["used_memory"])
    sids = _copies(admin, sid, copies)
    after = int(admin.info("memory")["used_memory"])
    admin.delete(*(session_key(s) for s in sids))
    return SessionMemory(messages, keys, usage, (after - before) / copies)


@contextlib.contextmanager
def limited_pod(
    workdir: Path, redis_port: int
) -> Iterator[tuple[Pod, Gunicorn, Nginx, CpuLimit, CpuLimit]]:
    """The pod's two containers on loopback, each in its CPU limit."""
    pod = pod_shape()
    logs = workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    app = our_app(redis_port, 0, logs, name="app-sizing")
    app.env["WEB_CONCURRENCY"] = str(pod.workers)
    proxy = Nginx(0, logs / "nginx-sizing.log", {"MESSAGE_MAX_LENGTH": "2000"})
    app_limit = CpuLimit("app", pod.app_limit, fallback_cpu=0)
    proxy_limit = CpuLimit("nginx", pod.proxy_limit, fallback_cpu=1)
    with contextlib.ExitStack() as stack:
        stack.callback(proxy_limit.remove)
        stack.callback(app_limit.remove)
        stack.callback(app.stop)
        app.start()
        assert app.process is not None
        app_limit.adopt({app.process.pid, *app.worker_pids()})
        proxy.upstream_port = app.port
        stack.callback(proxy.stop)
        proxy.start()
        assert proxy.process is not None
        proxy_limit.adopt({proxy.process.pid, *proxy.worker_pids()})
        yield pod, app, proxy, app_limit, proxy_limit


def _cpu(server: Gunicorn | Nginx) -> float:
    """The master's CPU and its workers'."""
    assert server.process is not None
    return cpu_seconds(server.process.pid) + server.cpu_seconds()


def load(
    name: str,
    requests: list[Request],
    save_share: float,
    seconds: int,
    servers: tuple[Gunicorn, Nginx, redis.Redis, int],
    limit_stat: Callable[[], int | None],
    workdir: Path,
) -> LoadRun:
    app, proxy, admin, redis_pid = servers
    counters = _Counters(admin)
    cpu_before = (_cpu(app), _cpu(proxy), cpu_seconds(redis_pid))
    calls_before, total_before, net_before = counters.read()
    throttled_before = limit_stat()
    result = run_wrk(proxy.url + "/", requests, seconds, workdir)
    calls_after, total_after, net_after = counters.read()
    cpu_after = (_cpu(app), _cpu(proxy), cpu_seconds(redis_pid))
    throttled_after = limit_stat()
    calls = {
        cmd: calls_after[cmd] - calls_before.get(cmd, 0)
        for cmd in calls_after
        if cmd not in NOT_THE_APPS and calls_after[cmd] > calls_before.get(cmd, 0)
    }
    app_cpu, proxy_cpu, redis_cpu = (a - b for a, b in zip(cpu_after, cpu_before, strict=True))
    return LoadRun(
        name,
        result.requests,
        result.seconds,
        save_share,
        result.status_errors + result.socket_errors,
        app_cpu,
        proxy_cpu,
        redis_cpu,
        # Our two INFO calls per read are not the app's.
        float(
            total_after
            - total_before
            - sum(calls_after.get(c, 0) - calls_before.get(c, 0) for c in NOT_THE_APPS)
        ),
        calls,
        net_after - net_before,
        None
        if throttled_before is None or throttled_after is None
        else throttled_after - throttled_before,
    )


def measure(
    workdir: Path, seconds: int, sessions: int, copies: int, log: Callable[[str], None]
) -> Sizing:
    server = bench_valkey(workdir / "redis-sizing")
    server.start()
    try:
        with (
            contextlib.closing(server.client()) as admin,
            limited_pod(workdir, server.port) as (pod, app, proxy, app_limit, proxy_limit),
        ):
            how = f"app: {app_limit.how}; nginx: {proxy_limit.how}"
            log(f"pod: {pod}; CPU limits by {how}")
            memory = [session_memory(app.port, admin, m, copies) for m in SESSION_SIZES]
            for step in memory:
                log(
                    f"session of {step.messages} messages: {step.used_memory:,.0f} B "
                    f"used_memory, {step.memory_usage:,} B MEMORY USAGE"
                )
            visitor = PageClient(proxy.port, timeout=30)
            visitor.get_page()
            for index in range(PAGE_MESSAGES):
                visitor.save(message_text(index))
            page_bytes = len(visitor.get_page().encode())
            sids = _copies(admin, visitor.cookies["session"], sessions)
            body = visitor.save_body(message_text(PAGE_MESSAGES))
            # The CSRF secret lives in a cookie of its own (app/csrf.py), the same for every copy.
            cookies = [f"session={sid}; csrf={visitor.cookies['csrf']}" for sid in sids]
            views = [Request("GET", cookie) for cookie in cookies]
            saves = [Request("POST", cookie, body, "/persistMessage") for cookie in cookies]
            mix = [
                request
                for index, sid in enumerate(sids)
                for request in (
                    views[index],
                    *([saves[index]] if index % SAVES_PER_MIX == 0 else []),
                )
            ]
            servers = (app, proxy, admin, server.pid or 0)
            runs = []
            for name, requests, share in (
                ("page views", views, 0.0),
                ("saves", saves, 1.0),
                (f"1 save per {SAVES_PER_MIX} views", mix, 1 / (SAVES_PER_MIX + 1)),
            ):
                run = load(name, requests, share, seconds, servers, app_limit.throttled, workdir)
                app_ms, proxy_ms = (
                    run.per_request(s) * 1e3 for s in (run.app_cpu_s, run.proxy_cpu_s)
                )
                log(
                    f"{name}: {run.rps:,.0f} req/s, app {app_ms:.2f} ms CPU/req, nginx "
                    f"{proxy_ms:.2f}, Redis {run.per_request(run.commands):.2f} commands, "
                    f"{run.per_request(run.net_bytes):,.0f} B/req; calls {run.calls}"
                )
                runs.append(run)
            return Sizing(pod, how, page_bytes, runs, memory)
    finally:
        server.stop()


def render(sizing: Sizing) -> str:
    pod = sizing.pod
    lines = [
        f"Pod: app limit {pod.app_limit:g} CPU, nginx {pod.proxy_limit:g} CPU, "
        f"{pod.workers} workers; limits by {sizing.limit_how}; page of {PAGE_MESSAGES} messages "
        f"{sizing.page_bytes:,} B.",
        "",
        "| run | req/s (cross-check) | app CPU ms/req | nginx CPU ms/req | capacity at the "
        "limits, req/s | Valkey CPU ms/req | Redis commands/req | bytes to and from Redis/req "
        "| est. ECPUs/req | errors | throttled periods |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    figures = sizing.pod_figures()
    for run in sizing.runs:
        app, proxy = run.per_request(run.app_cpu_s), run.per_request(run.proxy_cpu_s)
        commands, moved = run.per_request(run.commands), run.per_request(run.net_bytes)
        lines.append(
            f"| {run.name} | {run.rps:,.0f} | {app * 1e3:.2f} | {proxy * 1e3:.2f} "
            f"| {figures.at_limit(run.save_share) if app and proxy else 0:,.0f} "
            f"| {run.per_request(run.redis_cpu_s) * 1e3:.3f} | {commands:.2f} | {moved:,.0f} "
            f"| {CacheFigures.ecpus(commands, moved):.2f} | {run.errors} | {run.throttled} |"
        )
    lines += [
        "",
        "| session | keys | MEMORY USAGE, B | INFO used_memory per session, B |",
        "|---|---:|---:|---:|",
    ]
    for step in sizing.sessions:
        lines.append(
            f"| {step.messages} messages | {step.keys} | {step.memory_usage:,} "
            f"| {step.used_memory:,.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sizing", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="1 s runs, few sessions (CI)")
    parser.add_argument("--seconds", type=int, default=5, help="seconds per wrk run (default 5)")
    args = parser.parse_args(argv)

    log = progress_log("sizing")

    with tempfile.TemporaryDirectory(prefix="bench-sizing-") as workdir:
        sizing = run(Path(workdir), log, smoke=args.smoke, seconds=args.seconds)
    print(render(sizing))
    print()
    print(render_fleet(sizing.pod_figures(), sizing.cache_figures(), sizing.pod.hpa_max))
    return 0


def run(workdir: Path, log: Callable[[str], None], smoke: bool = False, seconds: int = 5) -> Sizing:
    """The measurement: the smoke version (1 s runs, 200 sessions) proves it end to end."""
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is missing: apt-get install -y wrk")
    if smoke:
        return measure(workdir, 1, sessions=200, copies=50, log=log)
    return measure(workdir, seconds, sessions=20_000, copies=500, log=log)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
