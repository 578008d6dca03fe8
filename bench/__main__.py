"""`python -m bench`: run the benchmark and print the Markdown table (see bench/__init__.py)."""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from pathlib import Path

from bench import failover, memory, progress_log, sizing
from bench.plan import Plan
from bench.report import render
from bench.run import run

DEFAULT_RESULTS = Path(__file__).resolve().parent / "results.md"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark the app against a bare-Flask ceiling and stock flask-session.",
    )
    parser.add_argument(
        "--smoke", action="store_true", help="tiny durations: proves the harness works (CI)"
    )
    parser.add_argument("--duration", type=int, help="seconds per wrk run (default 5, smoke 1)")
    parser.add_argument("--repeats", type=int, help="interleaved repeats (default 3, smoke 1)")
    parser.add_argument(
        "--write",
        nargs="?",
        const=DEFAULT_RESULTS,
        type=Path,
        metavar="PATH",
        help=f"also write the Markdown table (default {DEFAULT_RESULTS.name} in bench/)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="instead of the benchmark: py-spy one app worker under load, list hot spots and "
        "keep flame graphs",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the work directory (server logs, profiles)"
    )
    args = parser.parse_args(argv)
    if args.duration is not None and args.duration < 1:
        parser.error("--duration must be at least 1 (wrk counts whole seconds)")
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


log = progress_log("bench")


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    try:
        if args.profile:
            from bench.profile import profile

            print(profile(args.duration or 10, workdir, log))
            return 0
        maker = Plan.smoke if args.smoke else Plan.full
        default_duration, default_repeats = (1, 1) if args.smoke else (5, 3)
        plan = maker(args.duration or default_duration, args.repeats or default_repeats)
        results = run(plan, workdir, log)
        text = render(results, shlex.join(["python", "-m", "bench", *argv]))
        if not args.smoke:
            # Behaviour more than speed, in modules of their own (python -m bench.memory,
            # python -m bench.failover, python -m bench.sizing); tests/system/test_bench.py
            # runs each.
            steps = memory.run(workdir / "memory", memory.STEPS, log)
            text += "\n\n**j. Worker memory** (" + memory.SUMMARY + "):\n\n"
            text += memory.render(steps) + "\n"
            runs = failover.run(workdir / "failover", log)
            text += "\n**k. Saves through failovers** (" + failover.SUMMARY + "):\n\n"
            text += failover.render(runs) + "\n"
            measured = sizing.run(workdir / "sizing", log)
            text += "\n**l. One pod at its CPU limits** (" + sizing.SUMMARY + "):\n\n"
            text += sizing.render(measured) + "\n"
        print(text)
        if args.write:
            args.write.write_text(text)
            log(f"wrote {args.write}")
        if results.failures:
            log("FAILURE: " + "; ".join(results.failures))
            return 1
        return 0
    finally:
        # A profile is only useful with its flame graphs, so --profile keeps them.
        if args.keep or args.profile:
            log(f"kept {workdir}")
        else:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
