"""Render the results as one Markdown document (printed always, written with --write)."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from importlib import metadata

from bench.costs import CLUSTER_NAME
from bench.run import Results
from bench.throughput import LOPSIDED_RETRIES, Row
from bench.wrk import CONNECTIONS, THREADS, WrkResult, wrk_binary


def machine() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    versions = ", ".join(
        f"{name} {_version(name)}" for name in ("flask", "flask-session", "redis", "gunicorn")
    )
    wrk = subprocess.run([wrk_binary(), "--version"], capture_output=True, text=True, check=False)
    wrk_version = (wrk.stdout or wrk.stderr).split(" [", 1)[0].strip()
    return (
        f"{os.cpu_count()} CPUs ({cpu}), {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, {versions}, {wrk_version}; "
        f"load average at the end {load}"
    )


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "?"


def _mark(ok: bool) -> str:
    return "met" if ok else "MISSED"


def _lopsided(rows: dict[str, Row]) -> str:
    kept = [m for row in rows.values() for m in (row.warmup, *row.measured) if m is not None]
    runs = sum(m.lopsided_runs for m in kept)
    still = sum(m.lopsided_kept for m in kept)
    said = "none this time" if runs == 0 else f"{runs} run(s)"
    return (
        said if not still else f"{said}; {still} kept as they were after {LOPSIDED_RETRIES} tries"
    )


def render(results: Results, command: str) -> str:
    s = results.plan
    rows = results.rows
    ceiling = rows["page_ceiling"]
    out: list[str] = [
        f"Benchmark run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: `{command}`",
        "",
        f"Machine: {machine()}. Server: {results.server_version}.",
        "",
        f"wrk -t{THREADS} -c{CONNECTIONS}, {s.duration} s per run, {s.repeats} repeats "
        'interleaved (order rotated each repeat), medians shown ("x ceiling": median of the '
        "per-repeat ratios); gunicorn 2 workers (gthread, one thread each) with "
        "the repo's gunicorn.conf.py for every variant; one real Valkey on loopback; the "
        "cluster rows (a'', d''): the app with REDIS_CLUSTER=true on a real Valkey cluster on "
        "loopback, 3 primaries + 3 replicas of the same Valkey, their Redis CPU that of all "
        "six nodes. "
        "Page size: "
        + ", ".join(f"{name} {size:,} bytes" for name, size in results.page_bytes.items())
        + ". CPU columns: CPU time of the "
        "variant's gunicorn workers and of Valkey over the run, from /proc, per request "
        '(robust to other load on the machine, unlike req/s); "x ceiling by CPU" is the '
        "ceiling's (workers + Valkey) CPU per request over the row's: the throughput ratio "
        "a quiet CPU-bound machine would show. A run that one of the two workers served alone "
        "(wrk's connections all landed on it: half the req/s, more CPU per request) was "
        f"measured again: {_lopsided(rows)}.",
        "",
        "| row | req/s | p50 ms | p99 ms | x ceiling | req/s range | app CPU µs/req "
        "| Redis CPU µs/req | x ceiling by CPU | non-2xx/3xx + socket errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows.values():
        rps = [r.rps for r in row.results]
        out.append(
            f"| {row.label} | {row.rps:,.0f} | {row.p50:.2f} | {row.p99:.2f} | "
            f"{row.ratio_to(ceiling):.2f} | {min(rps):,.0f}-{max(rps):,.0f} | "
            f"{row.app_cpu_us:.0f} | {row.redis_cpu_us:.0f} | "
            f"{_cpu_ratio(rows['page_ceiling'], row):.2f} | {row.bad} |"
        )
    out += [
        "",
        "Saves: wrk does not follow redirects, so the POST rows time the POST and its 303 only. "
        f"Each POST row spreads over {s.pool_sessions} sessions that start with 10 messages "
        "(so sessions grow only a little during the run); the app needs a cookie and the "
        "csrf_token of its page, the anchor uses flask-wtf CSRFProtect the same way. "
        "Saves checked afterwards by counting the listed messages: "
        + "; ".join(f"{k}: {v}" for k, v in results.saves_verified.items())
        + ".",
        "",
        "**e. Save latency by messages already held** (one client, sequential POSTs on fresh "
        f"connections, {s.save_sessions} sessions per size filled through the endpoints, "
        f"{s.save_sessions * s.save_rounds} timed saves round-robin, so a session grows by "
        f"at most {s.save_rounds} during the timing):",
        "",
        "| messages held | app p50 ms | app p99 ms | anchor p50 ms | anchor p99 ms |",
        "|---:|---:|---:|---:|---:|",
    ]
    by_key = {(x.variant, x.held): x for x in results.save_latency}
    for held in s.save_sizes:
        app, anchor = by_key[("app", held)], by_key[("anchor", held)]
        out.append(
            f"| {held} | {app.percentile(50):.2f} | {app.percentile(99):.2f} | "
            f"{anchor.percentile(50):.2f} | {anchor.percentile(99):.2f} |"
        )
    out += [
        "",
        f"**f. Redis work per request** ({s.counted_requests} sequential requests each, after "
        "warm-up, on a separate Valkey reached through a counting proxy; commands from "
        "`INFO commandstats` deltas include those run inside Lua scripts; a round trip is one "
        "batch the app sends before it reads an answer, so a pipeline or a script call is one; "
        f"{CLUSTER_NAME}: the cluster of rows a'' and d'', counted over its three primaries, "
        "where every command lands, without the replicas' REPLCONF ACKs; no proxy there, so no "
        "round trips):",
        "",
        "| variant | request | commands/request | total_commands_processed/request "
        "| round trips/request | new connections |",
        "|---|---|---|---:|---:|---:|",
    ]
    for cost in results.redis_costs:
        commands = ", ".join(f"{k} {v:g}" for k, v in sorted(cost.commands.items())) or "none"
        out.append(
            f"| {cost.variant} | {cost.request} | {commands} | {cost.total_commands:.2f} | "
            f"{'-' if cost.round_trips is None else f'{cost.round_trips:.2f}'} | "
            f"{cost.new_connections} |"
        )
    out += [
        "",
        "**g. Bytes in Redis per session** (10 messages of 100 characters; `MEMORY USAGE key "
        "SAMPLES 0` of every key of the session):",
        "",
        "| variant | keys | bytes |",
        "|---|---|---:|",
    ]
    for fp in results.footprints:
        keys = ", ".join(f"`{k}` {v}" for k, v in sorted(fp.keys.items()))
        out.append(f"| {fp.variant} | {keys} | {fp.total} |")
    fault = results.fault
    if fault is not None:
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(fault.statuses.items()))
        first = (
            f"{fault.first_200_after_start_s:.2f} s"
            if fault.first_200_after_start_s is not None
            else "never"
        )
        out += [
            "",
            f"**h. Fault run**: app `GET /` under wrk for {fault.seconds} s; Valkey saved and "
            f"stopped at {fault.stop_at:g} s, started again at {fault.start_at:g} s on the same "
            f"port with the same data (it answered PING {fault.ping_after_start_s:.2f} s after "
            f"the start command). Responses by status: {statuses}; socket errors: "
            f"{fault.socket_errors}. First 200 {first} after the start command "
            f"(poller every 10 ms). The session listed {fault.messages_after} messages "
            "afterwards. One visitor's page views while Valkey was down (status, ms): "
            + (", ".join(f"{st} {sec * 1000:.0f}" for st, sec in fault.outage_probe) or "none")
            + ".",
        ]
    slow = results.slow
    out += [
        "",
        f"**i. Page view p50/p99 while {slow.headers + slow.bodies} slow clients are "
        f"connected** ({slow.headers} sending a header and {slow.bodies} a body, one byte per "
        f"second each, re-opened as soon as the server closes one; wrk -t{THREADS} "
        f"-c{CONNECTIONS} for {slow.seconds} s beside them, app `GET /` as in row a):",
        "",
        "| served by | req/s | p50 ms | p99 ms | non-2xx/3xx + socket errors | slow connections "
        "closed and re-opened |",
        "|---|---:|---:|---:|---:|---:|",
        _slow_row("nginx in front (as deployed)", slow.proxied, str(slow.reopened_proxied)),
        _slow_row("gunicorn directly (before nginx)", slow.bare, "-"),
    ]
    out += ["", "**Targets** (reported, not asserted):", ""]
    out += _targets(results)
    if results.failures:
        out += ["", "**FAILURE**:", ""] + [f"- {f}" for f in results.failures]
    return "\n".join(out) + "\n"


def _slow_row(label: str, result: WrkResult, reopened: str) -> str:
    if not result.requests:
        return f"| {label} | 0 | - | - | {result.socket_errors} | {reopened} |"
    return (
        f"| {label} | {result.rps:,.0f} | {result.p50_ms:.2f} | {result.p99_ms:.2f} | "
        f"{result.status_errors + result.socket_errors} | {reopened} |"
    )


def _cpu_total(row: Row) -> float:
    """App and Redis CPU per request, µs."""
    return row.app_cpu_us + row.redis_cpu_us


def _cpu_ratio(ceiling: Row, row: Row) -> float:
    return _cpu_total(ceiling) / max(_cpu_total(row), 1)


def _cluster_line(rows: dict[str, Row]) -> str:
    """The cluster rows against the same requests on one Valkey (no target: what it costs)."""
    parts = [
        f"{label} {cluster.ratio_to(single):.2f}x the req/s, "
        f"{_cpu_ratio(cluster, single):.2f}x the CPU per request (app + Redis)"
        for label, cluster, single in (
            ("page view (a'')/(a)", rows["page_app_cluster"], rows["page_app"]),
            ("save (d'')/(d)", rows["save_app_cluster"], rows["save_app"]),
        )
    ]
    return "- the cluster against one Valkey (reported only): " + "; ".join(parts)


def _targets(results: Results) -> list[str]:
    rows = results.rows
    ratio = rows["page_app"].ratio_to(rows["page_ceiling"])
    cpu_ratio = _cpu_ratio(rows["page_ceiling"], rows["page_app"])
    bare = rows["page_app_no_metrics"]
    metrics_ratio = rows["page_app"].ratio_to(bare)
    metrics_cpu = rows["page_app"].app_cpu_us - bare.app_cpu_us
    save_ratio = rows["save_app"].ratio_to(rows["save_anchor"])
    save_cpu = _cpu_ratio(rows["save_anchor"], rows["save_app"])
    deployed = rows["page_app_nginx"].ratio_to(rows["page_ceiling"])
    deployed_cpu = _cpu_ratio(rows["page_ceiling"], rows["page_app_nginx"])
    both_proxied = rows["page_app_nginx"].ratio_to(rows["page_ceiling_nginx"])
    floor = rows["save_ceiling"]
    anchor_over_floor = _cpu_ratio(rows["save_anchor"], floor)
    # What a save may cost above the floor to be 1.3x the anchor by CPU, and what the app's costs.
    allowed = _cpu_total(rows["save_anchor"]) / 1.3 - _cpu_total(floor)
    used = _cpu_total(rows["save_app"]) - _cpu_total(floor)
    lines = [
        f"- (a)/(b) ≥ 0.90 by CPU per request: {cpu_ratio:.2f} - {_mark(cpu_ratio >= 0.9)}; "
        f"{ratio:.2f} by req/s",
        f"- cost of the metrics, (a) against (a0): {metrics_ratio:.2f}x the req/s, "
        f"{metrics_cpu:+.0f} µs of app CPU per page view (reported only; (a)/(b) above "
        "is with metrics on)",
        f"- (a')/(b), the app as deployed against the bare ceiling: {deployed:.2f} by req/s - "
        f"{_mark(deployed >= 0.75)}; {deployed_cpu:.2f} by CPU per request (nginx's included) - "
        f"{_mark(deployed_cpu >= 0.75)}; (a')/(b'), both behind nginx: {both_proxied:.2f}",
        f"- (d) app saves at least 1.3x the anchor: {rows['save_app'].rps:,.0f} vs "
        f"{rows['save_anchor'].rps:,.0f} req/s, {save_ratio:.2f}x by req/s - "
        f"{_mark(save_ratio >= 1.3)}; {save_cpu:.2f}x by CPU per request - "
        f"{_mark(save_cpu >= 1.3)}",
        f"- (d0) the floor of a save under this server: the anchor's save costs "
        f"{anchor_over_floor:.2f}x its CPU; 1.3x the anchor leaves {allowed:.0f} µs per save "
        f"above the floor for CSRF, the session and the store, the app takes {used:.0f} µs "
        "(reported only)",
        _cluster_line(rows),
    ]
    sizes = results.plan.save_sizes
    by_key = {(x.variant, x.held): x for x in results.save_latency}
    small, large = by_key[("app", sizes[0])], by_key[("app", sizes[-1])]
    growth = large.percentile(50) / small.percentile(50)
    lines.append(
        f"- (e) app save p50 at {sizes[-1]} within 1.2x of p50 at {sizes[0]}: "
        f"{growth:.2f}x - {_mark(growth <= 1.2)}"
    )
    fault = results.fault
    if fault is not None:
        errors_500 = fault.statuses.get(500, 0)
        first = fault.first_200_after_start_s
        lines.append(
            f"- (h) zero 500s: {errors_500} - {_mark(errors_500 == 0)}; first 200 within 2 s "
            f"of Redis returning: {'never' if first is None else f'{first:.2f} s'} - "
            f"{_mark(first is not None and first <= 2)}"
        )
    return lines
