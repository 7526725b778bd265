"""``python -m nbqup`` / ``nbqup``: the command line.

::

    nbqup status PATH                 counts by status, and which process runs the jobs
    nbqup jobs PATH [--status S] [--json] [--limit N]
    nbqup cancel PATH ID              ID: a job id or a unique prefix of one
    nbqup retry PATH ID
    nbqup worker PATH [-w N]          run the store's jobs here until SIGTERM / Ctrl-C
    nbqup salvage PATH [--to NEW]     copy what still reads of a damaged store (nbqup.salvage)
    nbqup demo

Reading commands open the store with ``workers=0`` (as a client: they never run a job and
never create a store).  ``cancel`` and ``retry`` write a request that the process running
the store's workers applies on its periodic check; when such a process is alive, the
command waits a few seconds to report what it did.

``worker`` is the detached worker: it owns the store (``if_locked="raise"``: it refuses a
store another live process already runs) so that notebooks opening the same path become
clients that submit and watch, and experiments keep running while kernels restart.  Not
being inside a kernel, it handles SIGTERM, SIGINT and SIGHUP: it stops with
``close(wait=False)``, so jobs it was running resume, without counting that run, under the
next process that opens the store with workers.

Errors are one line on stderr, ``nbqup: ...``; exit status 2 for bad usage and a missing
store, 1 for any other failure.  ``NBQUP_DEBUG=1`` shows the traceback of an unexpected one.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn

from . import ownership
from .errors import last_line

if TYPE_CHECKING:
    from .job import JobRecord
    from .queue import JobQueue

__all__ = ["main"]

EXIT_ERROR = 1
EXIT_USAGE = 2
#: How long cancel/retry wait for a live owner to apply their request before reporting.
APPLY_WAIT = 5.0
#: Once the owner took the request, how long to wait for the job to change as expected.
SETTLE_WAIT = 0.5
_STATUSES = ("scheduled", "queued", "running", "succeeded", "failed", "cancelled", "skipped")
_NAME_WIDTH = 40
_INFO_WIDTH = 100


class CliError(Exception):
    """A failure to report as one line, ``nbqup: <message>``, with exit status ``code``."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


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
    p.set_defaults(run=_status)

    p = command(
        "jobs",
        "list the jobs of a store",
        "List the jobs of the store at PATH, oldest first: id, status, attempts, creation "
        "time (local), name, and the result, error or message.",
    )
    p.add_argument("path", metavar="PATH", help="the store directory")
    p.add_argument("--status", choices=_STATUSES, help="only jobs with this status")
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
    p.set_defaults(run=_jobs)

    p = command(
        "cancel",
        "cancel a job",
        "Cancel the job ID (a job id or a unique prefix of one) of the store at PATH.  A "
        "queued or scheduled job never runs; a running one is asked to stop (a thread job "
        "at its next progress/checkpoint call).  The process running the store applies it; "
        "if none is running, the next one to open the store does.",
    )
    p.add_argument("path", metavar="PATH", help="the store directory")
    p.add_argument("id", metavar="ID", help="a job id, or a unique prefix of one")
    p.set_defaults(run=_cancel)

    p = command(
        "retry",
        "run a failed or cancelled job again",
        "Queue the failed or cancelled job ID (a job id or a unique prefix of one) of the "
        "store at PATH again, with a fresh budget of retries.  The process running the store "
        "applies it; if none is running, the next one to open the store does.",
    )
    p.add_argument("path", metavar="PATH", help="the store directory")
    p.add_argument("id", metavar="ID", help="a job id, or a unique prefix of one")
    p.set_defaults(run=_retry)

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
    p.set_defaults(run=_worker)

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
    p.set_defaults(run=_salvage)

    p = command(
        "demo",
        "submit jobs, kill the process, reopen and resume",
        "A child process submits jobs defined in its __main__ and is SIGKILLed while they "
        "run; this process reopens the store and the jobs resume from their checkpoints.",
    )
    p.add_argument("--path", help="store directory (default: a new temporary one)")
    p.set_defaults(run=_demo)
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
            return _fail(_one_line(exc), EXIT_ERROR)
        return _fail(
            f"unexpected {type(exc).__name__}: {_one_line(exc)} (NBQUP_DEBUG=1 shows where)",
            EXIT_ERROR,
        )


def _fail(message: str, code: int) -> int:
    print(f"nbqup: {message}", file=sys.stderr, flush=True)
    return code


def _one_line(exc: BaseException) -> str:
    text = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


# ------------------------------------------------------------------------ opening stores


def _store_dir(path_arg: str) -> Path:
    """The directory of an existing store; a usage error if there is none."""
    path = Path(path_arg).expanduser()
    if not path.exists():
        raise CliError(f"no store at {path_arg}: no such directory", EXIT_USAGE)
    if not path.is_dir():
        raise CliError(f"no store at {path_arg}: it is not a directory", EXIT_USAGE)
    if not (path / "lmdb" / "data.mdb").is_file():
        raise CliError(f"no store at {path_arg}: the directory holds no nbqup store", EXIT_USAGE)
    return path


@contextlib.contextmanager
def _open_store(path_arg: str) -> Iterator[JobQueue]:
    """Open an existing store as a client (``workers=0``); never create one."""
    from .queue import JobQueue

    jq = JobQueue(_store_dir(path_arg), workers=0)
    try:
        yield jq
    finally:
        jq.close()


def _owner(jq: JobQueue) -> int | None:
    """Pid of the live process holding the store's owner lock (running its jobs), or None
    (see :func:`nbqup.ownership.holder`: asked of the kernel, never by taking the lock)."""
    assert jq.path is not None
    return ownership.holder(jq.path)


def _find(jq: JobQueue, ident: str) -> JobRecord:
    """The record of the job ``ident`` names: a job id, a job's key, or a unique prefix
    of an id."""
    from .errors import StoreCorrupt
    from .keys import lookup_key, show_key

    if not ident:
        raise CliError("ID is empty: give a job id (see 'nbqup jobs PATH')", EXIT_USAGE)
    try:
        job = jq.get(ident)
    except KeyError:
        prefix = lookup_key(ident)  # None: too long or not UTF-8, so no id starts with it
        found = [] if prefix is None else jq.store.backend.items("meta", prefix, 4)
        matches = [k for k, _ in found if k.startswith(ident)]
        if len(matches) > 1:
            shown = ", ".join(matches[:3]) + (", ..." if len(matches) > 3 else "")
            raise CliError(
                f"job id prefix {ident!r} matches several jobs ({shown}); give more of the id"
            ) from None
        raise CliError(f"no job {show_key(ident)} in store {jq.path}") from None
    try:
        return job.record
    except StoreCorrupt as exc:
        raise CliError(_one_line(exc)) from None


# ------------------------------------------------------------------------------ commands


def _status(args: argparse.Namespace) -> int:
    from .errors import StoreCorrupt

    with _open_store(args.path) as jq:
        counts: Counter[str] = Counter()
        unreadable = 0
        for rec in jq.store.scan():
            if isinstance(rec, StoreCorrupt):
                unreadable += 1
            else:
                counts[str(rec.status)] += 1
        set_aside = len(jq.corrupt)
        schedules: Counter[str] = Counter(s.state for s in jq.schedules())
        owner = _owner(jq)
        path = jq.path
    rows = [("store", str(path))]
    if owner is None:
        rows.append(("owner", "none (no process is running these jobs)"))
    else:
        rows.append(("owner", f"pid {owner}"))
    rows += [(s, str(counts[s])) for s in _STATUSES if counts[s]]
    rows.append(("total", str(sum(counts.values()))))
    if unreadable or set_aside:
        parts = [f"{unreadable} unreadable"] if unreadable else []
        parts += [f"{set_aside} set aside"] if set_aside else []
        rows.append(("corrupt", ", ".join(parts)))
    if schedules:
        states = ("active", "paused", "cancelled")
        rows.append(("schedules", ", ".join(f"{schedules[s]} {s}" for s in states if schedules[s])))
    for label, value in rows:
        print(f"{label:<10} {value}")
    return 0


def _jobs(args: argparse.Namespace) -> int:
    from .errors import StoreCorrupt

    with _open_store(args.path) as jq:
        records: list[JobRecord] = []
        unreadable = 0
        for rec in jq.store.scan():
            if isinstance(rec, StoreCorrupt):
                unreadable += 1
            elif args.status is None or rec.status == args.status:
                records.append(rec)
    if args.limit is not None:
        records = records[-args.limit :]
    if args.json:
        # default=str: a stored value JSON cannot hold (damaged by hand) is shown as text
        print(json.dumps([job_dict(rec) for rec in records], indent=2, default=str))
    else:
        for line in job_table(records):
            print(line)
    if unreadable:
        print(
            f"nbqup: {unreadable} unreadable job record(s) not shown (see 'nbqup status')",
            file=sys.stderr,
        )
    return 0


def job_dict(rec: JobRecord) -> dict[str, Any]:
    """One job as plain JSON-able data (``nbqup jobs --json``)."""
    return {
        "id": rec.id,
        "name": rec.name,
        "status": str(rec.status),
        "attempts": rec.attempts,
        "created": _iso(rec.created),
        "scheduled_for": _iso(rec.scheduled_for),
        "started": _iso(rec.started),
        "finished": _iso(rec.finished),
        "progress": rec.progress if _fraction(rec.progress) else None,
        "message": rec.message,
        "error": last_line(str(rec.error)) if rec.error else None,
        "traceback": rec.error,
        "result": rec.result_repr if rec.has_result else None,
        "tags": list(rec.tags) if isinstance(rec.tags, tuple | list) else [],
    }


def _fraction(value: object) -> bool:
    """Whether a stored progress is one nbqup records: a number in [0, 1]."""
    return isinstance(value, float | int) and 0.0 <= value <= 1.0


def job_table(records: list[JobRecord]) -> list[str]:
    """The lines of the ``nbqup jobs`` table (no trailing blanks)."""
    header = ("ID", "STATUS", "ATTEMPTS", "CREATED", "NAME", "INFO")
    rows = [
        (
            rec.id,
            str(rec.status),
            str(rec.attempts),
            _local(rec.created),
            _clip(rec.name, _NAME_WIDTH),
            _clip(_info(rec), _INFO_WIDTH),
        )
        for rec in records
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [
            cell.rjust(w) if i == 2 else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


def _info(rec: JobRecord) -> str:
    status = str(rec.status)
    if status == "succeeded":
        return rec.result_repr or ""
    if status == "failed":
        return last_line(str(rec.error)) if rec.error else str(rec.message or "")
    if status == "scheduled" and _local(rec.scheduled_for):
        due = f"due {_local(rec.scheduled_for)}"
        return f"{due}: {rec.message}" if rec.message else due
    if status == "running" and _fraction(rec.progress):
        done = f"{rec.progress:.0%}"
        return f"{done} {rec.message}" if rec.message else done
    return str(rec.message or "")


def _clip(text: object, width: int) -> str:
    text = " ".join(str(text).split())  # one line
    return text if len(text) <= width else text[: width - 3] + "..."


def _iso(ts: float | None) -> str | None:
    """ISO 8601 in UTC; None for a missing time or a stored value that is not one."""
    from .job import as_datetime

    when = as_datetime(ts)
    return None if when is None else when.isoformat()


def _local(ts: float | None) -> str:
    """Local time to the second; blank for a stored value that is not a time."""
    from .job import as_datetime

    when = as_datetime(ts)
    try:
        return "" if when is None else when.astimezone().strftime("%Y-%m-%d %H:%M:%S")
    except (OverflowError, ValueError, OSError):  # local time past year 9999 or before 1
        return ""


def _label(rec: JobRecord) -> str:
    return f"{rec.id} ({rec.name})"


def _cancel(args: argparse.Namespace) -> int:
    with _open_store(args.path) as jq:
        rec = _find(jq, args.id)
        if not jq.get(rec.id).cancel():
            raise CliError(f"job {_label(rec)} already {rec.status}; nothing to cancel")
        owner = _owner(jq)
        if owner is None:
            print(
                f"cancel of job {_label(rec)} recorded; no process is running the store, "
                "the next one to run it applies it before running anything"
            )
            return 0
        now = _follow(jq, rec.id, lambda r: r.status.final)
    if now.status == "cancelled":
        print(f"cancelled job {_label(rec)}")
    elif now.status.final:
        raise CliError(f"job {_label(rec)} {now.status} before the cancel took effect")
    elif now.status == "running":
        print(
            f"job {_label(rec)} is running; process {owner} asked it to stop (a thread job "
            "stops at its next progress or checkpoint call)"
        )
    else:
        print(f"cancel of job {_label(rec)} requested; process {owner} has not applied it yet")
    return 0


def _retry(args: argparse.Namespace) -> int:
    with _open_store(args.path) as jq:
        rec = _find(jq, args.id)
        try:
            jq.get(rec.id).retry()
        except ValueError as exc:
            raise CliError(_one_line(exc)) from None
        owner = _owner(jq)
        if owner is None:
            print(
                f"retry of job {_label(rec)} recorded; no process is running the store, "
                "the next one to run it runs the job"
            )
            return 0
        before = (rec.status, rec.attempts, rec.finished)
        now = _follow(jq, rec.id, lambda r: (r.status, r.attempts, r.finished) != before)
    if (now.status, now.attempts, now.finished) != before:
        print(f"retried job {_label(rec)}: now {now.status}")
    else:
        print(f"retry of job {_label(rec)} requested; process {owner} has not applied it yet")
    return 0


def _follow(jq: JobQueue, job_id: str, done: Callable[[JobRecord], bool]) -> JobRecord:
    """Poll the job until ``done``, or until its request was taken and it settled a bit."""
    deadline = time.monotonic() + APPLY_WAIT
    taken_at = None
    pause = 0.005
    while True:
        rec = jq.store.load(job_id)
        if rec is None:  # pragma: no cover - records are never deleted
            raise CliError(f"job {job_id} vanished from store {jq.path}")
        now = time.monotonic()
        if done(rec) or now >= deadline:
            return rec
        if taken_at is None and jq.store.backend.get("requests", job_id) is None:
            taken_at = now
        if taken_at is not None and now - taken_at >= SETTLE_WAIT:
            return rec
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


def _salvage(args: argparse.Namespace) -> int:
    from .salvage import salvage

    for line in salvage(_store_dir(args.path), args.to).lines():
        print(line)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import main as demo_main

    return demo_main(args.path)


# -------------------------------------------------------------------------------- worker


class _Signals:
    """Turn SIGTERM, SIGINT and SIGHUP into a stop request the main thread waits for.

    The handlers only record the signal: the wait wakes up through a wakeup file descriptor
    (no Event.set in a handler, which can deadlock).  SIGINT and SIGHUP stay ignored when
    the worker was started with them ignored (``nohup``, a shell's background job), as
    Python itself leaves them; SIGTERM always stops the worker.
    """

    def __init__(self) -> None:
        self.received: list[int] = []
        self._old: dict[int, Any] = {}
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)
        self._old_fd = signal.set_wakeup_fd(self._write)
        for name in ("SIGTERM", "SIGINT", "SIGHUP"):
            sig = getattr(signal, name, None)
            if sig is None or (name != "SIGTERM" and signal.getsignal(sig) == signal.SIG_IGN):
                continue
            self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received.append(signum)

    def wait(self) -> int:
        """Block until a signal arrived; return its number."""
        while not self.received:
            select.select([self._read], [], [], 1.0)  # the timeout is only a safety net
            with contextlib.suppress(BlockingIOError):
                os.read(self._read, 512)
        return self.received[0]

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        signal.set_wakeup_fd(self._old_fd)
        os.close(self._read)
        os.close(self._write)


def _worker(args: argparse.Namespace) -> int:
    from .errors import StoreCorrupt, StoreLocked
    from .queue import JobQueue

    path = Path(args.path).expanduser()
    if path.exists() and not path.is_dir():
        raise CliError(f"cannot run a store at {args.path}: it is not a directory", EXIT_USAGE)
    created = not (path / "lmdb" / "data.mdb").is_file()
    signals = _Signals()
    try:
        try:
            jq = JobQueue(
                path,
                workers=args.workers,
                executor=args.executor,
                durability=args.durability,
                poll_interval=args.poll,
                if_locked="raise",
            )
        except StoreLocked as exc:
            holder = f"process {exc.pid}" if exc.pid else "another process"
            raise CliError(
                f"store {exc.path} is already run by {holder}; stop that process first "
                "(notebooks can submit to it as clients meanwhile)"
            ) from None
        except StoreCorrupt:  # a ValueError too, but not a usage error
            raise
        except ValueError as exc:  # a bad --executor
            raise CliError(_one_line(exc), EXIT_USAGE) from None
        if created:
            print(f"nbqup worker: created a new store at {jq.path}", flush=True)
        n = args.workers
        print(
            f"nbqup worker: running {jq.path} with {n} worker{'' if n == 1 else 's'} "
            f"(pid {os.getpid()})",
            flush=True,
        )
        signum = signals.wait()
        running = sum(rec.status == "running" for rec in jq.snapshot(limit=10**9))
        print(
            f"nbqup worker: {signal.Signals(signum).name} received, stopping; "
            f"{running} running job{'' if running == 1 else 's'} will resume under the next "
            "process that runs the store",
            flush=True,
        )
        jq.close(wait=False)
        print("nbqup worker: stopped", flush=True)
        return 0
    finally:
        signals.restore()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
