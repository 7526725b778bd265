"""``python -m nbqup`` / ``nbqup``: the command line."""

from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nbqup", description="Durable background jobs.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="submit jobs, kill the process, reopen and resume")
    demo.add_argument("--path", help="store directory (default: a new temporary one)")
    status = sub.add_parser("status", help="counts of jobs by status in a store")
    status.add_argument("path")
    jobs = sub.add_parser("jobs", help="list the jobs in a store")
    jobs.add_argument("path")
    jobs.add_argument("--status", help="only jobs with this status")
    args = parser.parse_args(argv)

    if args.command == "demo":
        from .demo import main as demo_main

        return demo_main(args.path)
    return _inspect(args)


def _inspect(args: argparse.Namespace) -> int:
    from collections import Counter
    from pathlib import Path

    from .errors import NbqupError
    from .queue import JobQueue

    if not Path(args.path).is_dir():
        print(f"nbqup: no store at {args.path}", file=sys.stderr)
        return 2
    try:
        jq = JobQueue(args.path, workers=0)
    except NbqupError as exc:
        print(f"nbqup: {exc}", file=sys.stderr)
        return 2
    with jq:
        if args.command == "status":
            counts = Counter(str(job.status) for job in jq.jobs())
            for name, n in sorted(counts.items()):
                print(f"{name:<10} {n}")
            print(f"{'total':<10} {sum(counts.values())}")
        else:
            for job in jq.jobs(status=args.status):
                rec = job.record
                print(f"{job.id}  {rec.status!s:<10} {rec.attempts:>2}  {rec.name}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
