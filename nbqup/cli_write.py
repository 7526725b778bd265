"""The commands that change a store: ``nbqup cancel`` and ``nbqup retry``, ``nbqup
salvage`` (a fresh copy of a damaged store) and ``nbqup demo``.

``cancel`` and ``retry`` leave a request in the store.  On a store no process runs they
apply it at once, owning the store for a moment without running anything (so ``nbqup
jobs`` right after shows the change); while a process runs the store, that process
applies it on its periodic check, and they wait a few seconds to report what it did.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .cli_store import CliError, find_job, one_line, open_store, owner_pid, store_dir

if TYPE_CHECKING:
    from .queue import JobQueue
    from .records import JobRecord

__all__ = ["run_cancel", "run_demo", "run_retry", "run_salvage"]

#: How long cancel/retry wait for a live owner to apply their request before reporting.
APPLY_WAIT = 5.0
#: Once the owner took the request, how long to wait for the job to change as expected.
SETTLE_WAIT = 0.5


def _label(rec: JobRecord) -> str:
    return f"{rec.id} ({rec.name})"


def run_cancel(args: argparse.Namespace) -> int:
    with open_store(args.path) as jq:
        rec = find_job(jq, args.id)
        if not jq.get(rec.id).cancel():
            raise CliError(f"job {_label(rec)} already {rec.status}; nothing to cancel")
        owner, now = _apply(jq, rec, lambda r: r.status.final)
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
        print(f"cancel of job {_label(rec)} requested; {_who(owner)} has not applied it yet")
    return 0


def run_retry(args: argparse.Namespace) -> int:
    with open_store(args.path) as jq:
        rec = find_job(jq, args.id)
        try:
            jq.get(rec.id).retry(fresh=args.fresh)
        except ValueError as exc:
            raise CliError(one_line(exc)) from None
        before = (rec.status, rec.attempts, rec.finished)
        owner, now = _apply(jq, rec, lambda r: (r.status, r.attempts, r.finished) != before)
    if (now.status, now.attempts, now.finished) == before:
        print(f"retry of job {_label(rec)} requested; {_who(owner)} has not applied it yet")
    elif owner is None:
        print(
            f"retried job {_label(rec)}: now {now.status}; no process is running the store, "
            "the next one to run it runs the job"
        )
    else:
        print(f"retried job {_label(rec)}: now {now.status}")
    return 0


def _apply(
    jq: JobQueue, rec: JobRecord, done: Callable[[JobRecord], bool]
) -> tuple[int | None, JobRecord]:
    """Have the request just left for job ``rec`` applied: at once, by owning the store
    for a moment, when no process runs it (``JobQueue.apply_requests``); else by the
    process that does, followed until ``done`` (or for a few seconds).  Returns that
    process's pid (None: applied here) and the job's record then."""
    if jq.apply_requests():
        now = jq.store.load(rec.id)
        if now is None:  # pragma: no cover - records are never deleted
            raise CliError(f"job {rec.id} vanished from store {jq.path}")
        return None, now
    return owner_pid(jq), _follow(jq, rec.id, done)


def _who(owner: int | None) -> str:
    # None: the process that ran the store stopped just as the request was left
    return "no process" if owner is None else f"process {owner}"


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
        if taken_at is None and not jq.store.requests.waiting(job_id):
            taken_at = now
        if taken_at is not None and now - taken_at >= SETTLE_WAIT:
            return rec
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


def run_salvage(args: argparse.Namespace) -> int:
    from .salvage import salvage

    for line in salvage(store_dir(args.path), args.to).lines():
        print(line)
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from .demo import main as demo_main

    return demo_main(args.path)
