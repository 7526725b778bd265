"""``python -m nbqup`` / ``nbqup``: the command line.

::

    nbqup status PATH                 counts by status, and which process runs the jobs
    nbqup jobs PATH [--status S] [--json] [--limit N]
    nbqup cancel PATH ID              ID: a job id or a unique prefix of one
    nbqup retry [--fresh] PATH ID
    nbqup worker PATH [-w N]          run the store's jobs here until SIGTERM / Ctrl-C
    nbqup salvage PATH [--to NEW]     copy what still reads of a damaged store (nbqup.salvage)
    nbqup demo

Reading commands open the store with ``workers=0`` (as a client: they never run a job and
never create a store).  ``cancel`` and ``retry`` write a request that the process running
the store's workers applies on its periodic check; when such a process is alive, the
command waits a few seconds to report what it did.  When none is, the command applies
its request itself at once, owning the store for a moment without running anything.

``worker`` is the detached worker: it owns the store (``if_locked="raise"``: it refuses a
store another live process already runs) so that notebooks opening the same path become
clients that submit and watch, and experiments keep running while kernels restart.  Not
being inside a kernel, it handles SIGTERM, SIGINT and SIGHUP: it stops with
``close(wait=False)``, so jobs it was running resume, without counting that run, under the
next process that opens the store with workers.

Errors are one line on stderr, ``nbqup: ...``; exit status 2 for bad usage and a missing
store, 1 for any other failure.  ``NBQUP_DEBUG=1`` shows the traceback of an unexpected one.

This module holds the parser and :func:`main`; the commands live in
:mod:`nbqup.cli_read` (status, jobs), :mod:`nbqup.cli_write` (cancel, retry, salvage, demo)
and :mod:`nbqup.cli_worker` (worker), over :mod:`nbqup.cli_store` (opening a store, errors).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import NoReturn

from .cli_read import STATUSES, run_jobs, run_status
from .cli_store import EXIT_ERROR, EXIT_USAGE, CliError, one_line
from .cli_worker import run_worker
from .cli_write import run_cancel, run_demo, run_retry, run_salvage

__all__ = ["build_parser", "main"]


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit status 2) like every other error."""

    def error(self, message: str) -> NoReturn:
        raise CliError(f"{message} (see '{self.prog} --help')", EXIT_USAGE)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="nbqup",
        description="Durable background jobs for Jupyter notebooks: inspect a store, "
        "cancel or retry its jobs, or run its workers in a detached process.",
        epilog="Exit status: 0 on success, 1 on an error, 2 on bad usage or a missing store.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")

    def command(name: str, help: str, description: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(name, help=help, description=description)
        return p

    p = command(
        "status",
        "counts of jobs by status, and which process runs them",
        "Show how many jobs of the store at PATH are in each status, and the pid of the "
        "process running its workers (a 'nbqup worker' or a notebook), if one is alive.",
    )
    p.add_argument("path", metavar="PATH", help="the store directory")
    p.set_defaults(run=run_status)

    p = command(
        "jobs",
        "list the jobs of a store",
        "List the jobs of the store at PATH, oldest first: id, status, attempts, creation "
        "time (local), name, and the result, error or message.",
    )
    p.add_argument("path", metavar="PATH", help="the store directory")
    p.add_argument("--status", choices=STATUSES, help="only jobs with this status")
    p.add_argument(
        "--json",
        action="store_true",
        help="print a JSON list of objects (id, name, status, attempts, created, "
        "scheduled_for, started, finished as ISO 8601 strings, progress, message, error "
        "(its last line), traceback, result (a short repr), tags) instead of a table",
    )
    p.add_argument(
        "--limit", type=_positive_int, metavar="N", help="only the N most recently created jobs"
    )
    p.set_defaults(run=run_jobs)

    p = command(
        "cancel",
        "cancel a job",
        "Cancel the job ID (a job id or a unique prefix of one) of the store at PATH.  A "
        "queued or scheduled job never runs; a running one is asked to stop (a thread job "
        "at its next progress/checkpoint call).  The process running the store applies it; "
        "if none is running, it is applied at once.",
    )
    p.add_argument("path", metavar="PATH", help="the store directory")
    p.add_argument("id", metavar="ID", help="a job id, or a unique prefix of one")
    p.set_defaults(run=run_cancel)

    p = command(
        "retry",
        "run a failed or cancelled job again",
        "Queue the failed or cancelled job ID (a job id or a unique prefix of one) of the "
        "store at PATH again, with a fresh budget of retries.  The process running the store "
        "applies it; if none is running, it is applied at once (the next process to run "
        "the store runs the job).",
    )
    p.add_argument("path", metavar="PATH", help="the store directory")
    p.add_argument("id", metavar="ID", help="a job id, or a unique prefix of one")
    p.add_argument(
        "--fresh", action="store_true", help="drop its durable steps and checkpoint: start over"
    )
    p.set_defaults(run=run_retry)

    p = command(
        "worker",
        "run a store's jobs in this process until SIGTERM or Ctrl-C",
        "Run the workers of the store at PATH (created if missing) in this process, so "
        "notebooks that open the same path submit to it as clients and their experiments "
        "keep running while kernels restart.  Refuses a store already run by another live "
        "process.  On SIGTERM, SIGINT (Ctrl-C) or SIGHUP it stops within about a second and "
        "exits 0; jobs it was running resume under the next process that runs the store, "
        "and that interrupted run does not count as an attempt.  (Started with SIGINT or "
        "SIGHUP ignored, as by nohup or a shell's '&', it leaves them ignored.)",
    )
    p.add_argument("path", metavar="PATH", help="the store directory")
    p.add_argument(
        "-w",
        "--workers",
        type=_positive_int,
        default=4,
        metavar="N",
        help="jobs run at the same time (default: 4)",
    )
    p.add_argument(
        "--durability",
        choices=("process", "fsync"),
        default="process",
        help="'process' (default): every write survives a kill of this process; "
        "'fsync': it survives a power loss too (slower)",
    )
    p.add_argument(
        "--executor",
        default="thread",
        metavar="EXECUTOR",
        help="where jobs run: 'thread' (default), 'process', or a Dask scheduler address",
    )
    p.add_argument(
        "--poll",
        type=_positive_float,
        default=0.2,
        metavar="SECONDS",
        help="how often to look for jobs and requests from other processes (default: 0.2)",
    )
    p.add_argument(
        "--gpus",
        default=None,
        metavar="IDS",
        help="GPU slots for jobs asking for options(gpus=n): a count or device ids, '0,1'",
    )
    p.set_defaults(run=run_worker)

    p = command(
        "salvage",
        "copy what still reads of a damaged store into a fresh one",
        "Copy every record of the store at PATH that still reads into a fresh store "
        "(PATH.salvaged, or NEW), reading the damaged file without LMDB, and say what was "
        "lost: job ids, records on damaged pages, payloads that fail their checksum.  PATH "
        "is only read; stop the processes using it first.",
    )
    p.add_argument("path", metavar="PATH", help="the damaged store's directory")
    p.add_argument(
        "--to", metavar="NEW", help="where to create the fresh store (default: PATH.salvaged)"
    )
    p.set_defaults(run=run_salvage)

    p = command(
        "demo",
        "submit jobs, kill the process, reopen and resume",
        "A child process submits jobs defined in its __main__ and is SIGKILLed while they "
        "run; this process reopens the store and the jobs resume from their checkpoints.",
    )
    p.add_argument("--path", help="store directory (default: a new temporary one)")
    p.set_defaults(run=run_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (the console script exits with it)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if getattr(args, "run", None) is None:
            raise CliError("a command is needed (see 'nbqup --help')", EXIT_USAGE)
        code: int = args.run(args)
        return code
    except CliError as exc:
        return _fail(str(exc), exc.code)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except BrokenPipeError:  # `nbqup jobs PATH | head`: stop quietly
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return EXIT_ERROR
    except Exception as exc:
        from .errors import NbqupError

        if os.environ.get("NBQUP_DEBUG"):
            raise
        if isinstance(exc, NbqupError | OSError):
            return _fail(one_line(exc), EXIT_ERROR)
        return _fail(
            f"unexpected {type(exc).__name__}: {one_line(exc)} (NBQUP_DEBUG=1 shows where)",
            EXIT_ERROR,
        )


def _fail(message: str, code: int) -> int:
    print(f"nbqup: {message}", file=sys.stderr, flush=True)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
