"""``python -m ops.drill``: load, disruptions, read-back, report (see ``ops.drill``).

Exit status: 0 passed, 1 an acknowledged save was lost or doubled (or a disruption did not
complete), 2 usage error (also: the cache cannot be failed over), 3 the app, AWS or kubectl
could not be reached.
"""

from __future__ import annotations

# Locust first: it monkey-patches the standard library for gevent before anything opens a socket.
from ops.drill import load  # isort: skip

import argparse
import secrets
import sys
import time
from collections.abc import Sequence

from ops.cli import EXIT_FAILED, EXIT_PASSED, EXIT_UNREACHABLE, EXIT_USAGE, number
from ops.drill.disruptions import Failover, Refused, Rollout, Unreachable
from ops.drill.readback import read_back
from ops.drill.records import Disruption, Run, audit
from ops.drill.report import format_report
from ops.verify import Unreachable as AppUnreachable
from ops.verify import wait_until_serving


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ops.drill",
        description=(
            "Run steady load from many sessions against a deployment, optionally fail the cache "
            "over and restart the pods meanwhile, then check every acknowledged save."
        ),
        epilog="Exit status: 0 passed, 1 failed, 2 usage, 3 unreachable.",
    )
    parser.add_argument("--url", required=True, help="the app's base URL (the load balancer)")
    steady = parser.add_argument_group("load")
    steady.add_argument("--users", **number(10, "sessions at a time"))
    steady.add_argument("--rate", **number(10.0, "requests a second, all users together"))
    steady.add_argument("--save-every", **number(25, "every n-th request of a user saves"))
    steady.add_argument("--saves-per-session", **number(100, "then the user starts a new one"))
    steady.add_argument("--spawn-rate", **number(1.0, "users started a second"))
    steady.add_argument("--duration", **number(300.0, "seconds of load at least"))
    steady.add_argument("--disrupt-after", **number(60.0, "seconds before the first disruption"))
    steady.add_argument("--settle", **number(30.0, "seconds of load after each disruption"))
    steady.add_argument("--window", **number(5.0, "seconds per latency row of the report"))
    failover = parser.add_argument_group("cache failover (ElastiCache TestFailover)")
    failover.add_argument("--failover", metavar="REPLICATION_GROUP", help="fail this group over")
    failover.add_argument("--node-group", help="its node group (shard); default: the first")
    failover.add_argument("--profile", help="AWS profile (default: the environment's)")
    failover.add_argument("--region", help="AWS region (default: the profile's)")
    failover.add_argument("--failover-timeout", **number(1200.0, "seconds to wait for recovery"))
    rollout = parser.add_argument_group("pod replacement (kubectl rollout restart)")
    rollout.add_argument("--rollout", action="store_true", help="restart the Deployment's pods")
    rollout.add_argument("--deployment", default="message-app", help="(message-app)")
    rollout.add_argument("--namespace", help="default: the kubeconfig context's")
    rollout.add_argument("--rollout-timeout", **number(900.0, "seconds for the rollout"))
    parser.add_argument("--timeout", **number(60.0, "seconds to wait for the app to answer"))
    return parser


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    positive = ("users", "rate", "save_every", "saves_per_session", "spawn_rate", "window")
    for name in positive:
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.save_every < 2:
        parser.error("--save-every must be at least 2 (a save needs a page's form first)")
    for name in ("duration", "disrupt_after", "settle", "timeout"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must not be negative")
    if not args.url.startswith(("http://", "https://")):
        parser.error("--url must start with http:// or https://")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    _check(parser, args)
    url = args.url.rstrip("/")
    disruptions: list[Failover | Rollout] = []
    if args.failover:
        failover = Failover(
            args.failover, args.node_group, args.profile, args.region, args.failover_timeout
        )
        disruptions.append(failover)
    if args.rollout:
        disruptions.append(Rollout(args.deployment, args.namespace, args.rollout_timeout))
    try:
        wait_until_serving(url, time.monotonic() + args.timeout)
        descriptions = [d.prepare() for d in disruptions]
    except Refused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (AppUnreachable, Unreachable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE

    plan = load.Plan(
        args.users, args.rate, args.save_every, args.saves_per_session, args.spawn_rate
    )
    run = Run(url, args.users, args.rate, args.save_every, tag=secrets.token_hex(3))

    def pause(seconds: float) -> None:
        time.sleep(max(0.0, seconds))

    def during() -> None:
        pause(run.started + args.disrupt_after - time.time())
        for disruption, description in zip(disruptions, descriptions, strict=True):
            record = Disruption(disruption.name, description)
            run.disruptions.append(record)
            print(f"drill: {disruption.name}: {description}", file=sys.stderr)
            disruption.run(record)
            outcome = "complete" if record.completed else f"NOT complete: {record.error}"
            print(f"drill: {disruption.name} {outcome}", file=sys.stderr)
            pause(args.settle)
        pause(run.started + args.duration - time.time())

    print(f"drill: load on {url} with {args.users} users", file=sys.stderr)
    load.drive(url, plan, run, during)
    print("drill: load stopped; reading every session's page", file=sys.stderr)
    read_back(url, run.sessions)
    result = audit(run.sessions)
    print(format_report(run, result, args.window), end="")
    completed = all(d.completed for d in run.disruptions)
    return EXIT_PASSED if result.passed and completed else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
