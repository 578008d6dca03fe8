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

from ops.drill.disruptions import Failover, Refused, Rollout, Unreachable
from ops.drill.readback import read_back
from ops.drill.records import Disruption, Run, audit
from ops.drill.report import format_report
from ops.verify import Unreachable as AppUnreachable
from ops.verify import wait_until_serving

EXIT_PASSED, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


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
    load_options = parser.add_argument_group("load")
    load_options.add_argument("--users", type=int, default=10, help="sessions at a time (10)")
    load_options.add_argument(
        "--rate", type=float, default=10.0, help="requests a second, all users together (10)"
    )
    load_options.add_argument(
        "--save-every", type=int, default=25, help="every n-th request of a user saves (25)"
    )
    load_options.add_argument(
        "--saves-per-session", type=int, default=100, help="then the user starts a new one (100)"
    )
    load_options.add_argument(
        "--spawn-rate", type=float, default=1.0, help="users started a second (1)"
    )
    load_options.add_argument(
        "--duration", type=float, default=300.0, help="seconds of load at least (300)"
    )
    load_options.add_argument(
        "--disrupt-after", type=float, default=60.0, help="seconds before the first disruption (60)"
    )
    load_options.add_argument(
        "--settle", type=float, default=30.0, help="seconds of load after each disruption (30)"
    )
    load_options.add_argument(
        "--window", type=float, default=5.0, help="seconds per latency row of the report (5)"
    )
    failover = parser.add_argument_group("cache failover (ElastiCache TestFailover)")
    failover.add_argument("--failover", metavar="REPLICATION_GROUP", help="fail this group over")
    failover.add_argument("--node-group", help="its node group (shard); default: the first")
    failover.add_argument("--profile", help="AWS profile (default: the environment's)")
    failover.add_argument("--region", help="AWS region (default: the profile's)")
    failover.add_argument(
        "--failover-timeout", type=float, default=1200.0, help="seconds to wait for recovery (1200)"
    )
    rollout = parser.add_argument_group("pod replacement (kubectl rollout restart)")
    rollout.add_argument("--rollout", action="store_true", help="restart the Deployment's pods")
    rollout.add_argument("--deployment", default="message-app", help="(message-app)")
    rollout.add_argument("--namespace", help="default: the kubeconfig context's")
    rollout.add_argument(
        "--rollout-timeout", type=float, default=900.0, help="seconds for the rollout (900)"
    )
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait for the app to answer (60)"
    )
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
