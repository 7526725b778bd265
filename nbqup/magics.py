"""The IPython extension: ``%load_ext nbqup``, the ``%nbqup`` magics.

The extension remembers a *current queue* (see :func:`current_queue`): the one the last
``%nbqup open`` opened or switched to, else ``JobQueue(".nbqup")`` opened on first use.
Opening a path that a queue of this process already has open reuses that queue, so
``%reload_ext nbqup`` or running the ``open`` cell again never starts a second queue (and
a second set of workers) on the same store.

``%%nbqup`` runs a cell in the background.  The job stores the cell's *source*, not a
function, so it resumes after a kernel restart like any other job; its code runs with
the notebook's namespace (``get_ipython().user_ns``) as its globals *at the time it runs*:
it reads the variables defined then and its assignments land there, as if the cell had
run.  After a restart that namespace holds only what the cells run since then defined,
so a resumed cell job that reads a variable no re-run cell defined fails with a
``NameError`` -- re-run the cells it needs first, or have it load what it needs itself.
Outside a kernel (a process executor, ``nbqup worker``) it runs in a fresh namespace.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import keyword
import shlex
from pathlib import Path
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class

from .labels import short_path
from .queue import JobQueue

__all__ = [
    "NbqupMagics",
    "current_queue",
    "load_ipython_extension",
    "open_queue",
    "run_cell",
    "unload_ipython_extension",
]

#: The store ``%nbqup`` uses when no queue was opened.
DEFAULT_PATH = ".nbqup"

_current: JobQueue | None = None


def _open_queues() -> list[JobQueue]:

    return JobQueue.open_queues()


def _same_path(jq: JobQueue, path: Path) -> bool:
    return jq.path is not None and Path(jq.path).resolve() == path


def open_queue(path: str | Path, workers: int = 4, executor: str = "thread") -> JobQueue:
    """The open queue of this process on ``path``, or a new ``JobQueue(path, workers)``;
    either way it becomes the current queue."""
    global _current
    where = Path(path).expanduser().resolve()
    found = next((q for q in _open_queues() if _same_path(q, where)), None)
    _current = found or JobQueue(where, workers=workers, executor=executor)
    return _current


def current_queue() -> JobQueue:
    """The queue the magics work on: the last one opened with ``%nbqup open``; else the
    only queue open in this process; else ``JobQueue(".nbqup")``, opened now."""
    global _current
    if _current is not None and not _current.closed:
        return _current
    others = _open_queues()
    _current = others[0] if len(others) == 1 else None
    return _current or open_queue(DEFAULT_PATH)


def run_cell(source: str, name: str = "cell") -> Any:
    """Run a notebook cell's source as a job (what ``%%nbqup`` submits).

    The globals are the running IPython shell's user namespace (a fresh one without a
    shell); IPython syntax is translated first.  Returns the value of the cell's last
    line when it is an expression, like ``Out[n]``.

    >>> run_cell("x = 6\\nx * 7")
    42
    """
    from IPython import get_ipython

    shell = get_ipython()
    namespace: dict[str, Any] = {"__name__": "__main__"} if shell is None else shell.user_ns
    if shell is not None:
        source = shell.transform_cell(source)
    filename = f"<%%nbqup {name}>"
    tree = ast.parse(source, filename)
    last = tree.body[-1] if tree.body else None
    if not isinstance(last, ast.Expr):
        exec(compile(tree, filename, "exec"), namespace)
        return None
    tree.body.pop()
    exec(compile(tree, filename, "exec"), namespace)
    return eval(compile(ast.Expression(last.value), filename, "eval"), namespace)


class _Stop(Exception):
    """argparse asked to exit (``--help`` was printed)."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports errors as IPython ``UsageError`` lines instead of exiting."""

    def error(self, message: str) -> Any:
        raise UsageError(f"{self.prog}: {message} (see %nbqup?)")

    def exit(self, status: int = 0, message: str | None = None) -> Any:
        if message:
            print(message)
        raise _Stop


def _line_parser() -> _Parser:
    parser = _Parser(prog="%nbqup", description="Durable background jobs (nbqup).")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    op = sub.add_parser("open", help="open (or switch to) the queue stored in PATH")
    op.add_argument("path")
    op.add_argument("-w", "--workers", type=int, default=4, help="worker threads (default 4)")
    op.add_argument("-e", "--executor", default="thread", choices=("thread", "process"))
    op.add_argument(
        "--as", dest="as_name", default="jq", metavar="NAME", help="the variable (default jq)"
    )
    jobs = sub.add_parser("jobs", help="the job history as a DataFrame")
    jobs.add_argument("--status", help="only jobs with this status (e.g. failed)")
    jobs.add_argument("--name", help="only jobs with this name")
    for verb, what in (("cancel", "cancel a job"), ("retry", "run a failed job again")):
        sub.add_parser(verb, help=what).add_argument("id", help="a job id or a unique prefix")
    sub.choices["retry"].add_argument(
        "--fresh", action="store_true", help="drop its durable steps and checkpoint: start over"
    )
    wait = sub.add_parser("wait", help="wait until every job is done")
    wait.add_argument("--timeout", type=float, help="give up after this many seconds")
    close = sub.add_parser("close", help="close the current queue")
    close.add_argument("--now", action="store_true", help="leave running jobs to resume later")
    sub.add_parser("help", help="show this help")
    return parser


def _cell_parser() -> _Parser:
    parser = _Parser(prog="%%nbqup", description="Run this cell's code as a background job.")
    parser.add_argument("--name", help="the job's name (default: the cell's first line)")
    parser.add_argument("--after", help='start no sooner than this delay: "90s", "5m", "1h30m"')
    parser.add_argument("--every", help='run it again and again at this interval: "1h"')
    parser.add_argument("--key", help="a job with this key already alive is returned instead")
    return parser


def _default_name(source: str) -> str:
    first = next((ln.strip() for ln in source.splitlines() if ln.strip()), "cell")
    return "cell: " + (first if len(first) <= 40 else first[:39] + "…")


@magics_class
class NbqupMagics(Magics):
    """The ``%nbqup`` line magic and the ``%%nbqup`` cell magic."""

    @line_cell_magic
    def nbqup(self, line: str, cell: str | None = None) -> Any:
        """Durable background jobs for this notebook (nbqup).

        Line magic::

            %nbqup                        show the live dashboard of the current queue
            %nbqup open PATH [-w N]       open (or switch to) the queue stored in PATH,
                       [--as NAME]        with N worker threads (default 4), and put it
                                          in the variable ``jq`` (or NAME); a queue
                                          already open on PATH here is reused
            %nbqup jobs [--status S]      the job history as a DataFrame
                        [--name NAME]
            %nbqup cancel ID              cancel a job (ID or a unique prefix of it)
            %nbqup retry [--fresh] ID     run a failed or cancelled job again (--fresh:
                                          without its durable steps and checkpoint)
            %nbqup wait [--timeout S]     wait until every job is done
            %nbqup close [--now]          close the current queue (--now: leave running
                                          jobs to resume when it is reopened)

        Cell magic::

            %%nbqup [--name NAME] [--after DELAY] [--every INTERVAL] [--key KEY]
            <code>

        runs the cell's code as a background job and shows its progress bar (the
        Job, or the Schedule with --every, is the cell's value: ``job = _``).
        DELAY and INTERVAL read like "90s", "5m", "1h30m".  The code runs with the
        notebook's variables as its globals when it runs, and what it assigns lands
        there.  The cell's source is stored, so the job resumes after a kernel
        restart -- but then it sees only the variables of the cells run since the
        restart.  print() inside goes to ``job.logs``, display() to ``job.show()``.

        ``%nbqup open`` binds the queue to ``jq`` in the notebook (``--as NAME`` for
        another variable; re-running it binds the same queue again).  Without
        ``%nbqup open``, the queue is ``JobQueue(".nbqup")``.  From code:
        ``nbqup.magics.current_queue()``.
        """
        if cell is not None:
            return self._cell(line, cell)
        try:
            args = _line_parser().parse_args(shlex.split(line))
        except _Stop:
            return None
        except ValueError as exc:  # shlex: unbalanced quotes
            raise UsageError(f"%nbqup: {exc}") from None
        command = args.command or "show"
        try:
            return getattr(self, "_" + command)(args)
        except (KeyError, ValueError, TypeError) as exc:
            message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
            raise UsageError(f"%nbqup {command}: {message}") from None

    # -- line magic commands -----------------------------------------------------------

    def _show(self, args: argparse.Namespace) -> None:
        from .widgets import display_queue

        display_queue(current_queue())

    def _help(self, args: argparse.Namespace) -> None:
        print(NbqupMagics.nbqup.__doc__)

    def _open(self, args: argparse.Namespace) -> None:
        if args.workers < 0:
            raise ValueError(f"workers must be >= 0, got {args.workers}")
        name = args.as_name
        if not name.isidentifier() or keyword.iskeyword(name):
            raise ValueError(f"--as needs a Python variable name, got {name!r}")
        where = Path(args.path).expanduser().resolve()
        reused = any(_same_path(q, where) for q in _open_queues())
        jq = open_queue(where, args.workers, args.executor)
        if self.shell is not None:  # the notebook's variable, as if `jq = JobQueue(...)`
            self.shell.user_ns[name] = jq
        shown = short_path(where)  # as the dashboard's header shows it
        role = "runs its jobs" if jq.is_owner else "is a client (another process runs the jobs)"
        if reused:
            note = "" if jq.workers == args.workers else "; close it to change its workers"
            print(
                f"nbqup: {shown} was already open here ({jq.workers} workers{note}); "
                f"using it as `{name}`"
            )
        else:
            unfinished = sum(1 for r in jq.snapshot(limit=1_000_000) if not r.status.final)
            print(
                f"nbqup: opened {shown}: {jq.workers} workers, {unfinished} unfinished; "
                f"{role}; it is `{name}`"
            )

    def _jobs(self, args: argparse.Namespace) -> Any:
        return current_queue().jobs_df(status=args.status, name=args.name)

    def _cancel(self, args: argparse.Namespace) -> None:
        job = current_queue().get(args.id)
        if job.cancel():
            print(f"nbqup: cancelled job {job.id} ({job.name})")
        else:
            print(f"nbqup: job {job.id} ({job.name}) had already ended: {job.status}")

    def _retry(self, args: argparse.Namespace) -> None:
        job = current_queue().get(args.id).retry(fresh=args.fresh)
        how = " from the start (steps and checkpoint dropped)" if args.fresh else ""
        print(f"nbqup: job {job.id} ({job.name}) will run again{how}")

    def _wait(self, args: argparse.Namespace) -> None:
        jq = current_queue()
        if jq.wait(args.timeout):
            print("nbqup: every job is done")
        else:
            left = sum(1 for r in jq.snapshot(limit=1_000_000) if not r.status.final)
            print(f"nbqup: {left} jobs still unfinished after {args.timeout}s")

    def _close(self, args: argparse.Namespace) -> None:
        global _current
        jq = current_queue()
        jq.close(wait=not args.now)
        _current = None
        print(f"nbqup: closed {jq.path or 'the in-memory queue'}")

    # -- the cell magic ----------------------------------------------------------------

    def _cell(self, line: str, cell: str) -> Any:
        try:
            args = _cell_parser().parse_args(shlex.split(line))
        except _Stop:
            return None
        except ValueError as exc:
            raise UsageError(f"%%nbqup: {exc}") from None
        if not cell.strip():
            raise UsageError("%%nbqup: the cell is empty; put the code to run below the magic")
        try:
            compile(self.shell.transform_cell(cell) if self.shell else cell, "<cell>", "exec")
        except SyntaxError as exc:
            raise UsageError(f"%%nbqup: the cell does not compile: {exc}") from None
        name = args.name or _default_name(cell)
        jq = current_queue()
        try:
            builder = jq.options(name=name)
            if args.after:
                builder = builder.after(args.after)
            if args.key:
                builder = builder.options(key=args.key)
            if args.every:
                if not args.key:  # re-running the cell finds its schedule, as for code
                    digest = hashlib.blake2b(cell.encode(), digest_size=8).hexdigest()
                    builder = builder.options(key=f"%%nbqup {digest} every {args.every}")
                return builder.every(args.every).submit(run_cell, cell, name)
            return builder.submit(run_cell, cell, name)
        except (ValueError, TypeError) as exc:
            raise UsageError(f"%%nbqup: {exc}") from None


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext nbqup``: register the magics (the current queue survives a reload)."""
    ipython.register_magics(NbqupMagics)


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext nbqup``: remove the magics; open queues stay open (and current)."""
    manager = getattr(ipython, "magics_manager", None)
    if manager is not None:
        for kind in ("line", "cell"):
            manager.magics[kind].pop("nbqup", None)
