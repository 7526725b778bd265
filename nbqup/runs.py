"""A job's runs: one entry per run started, kept in the job's record (``JobRecord.runs``).

Each run is ``(started, finished, outcome)``: epoch seconds, ``finished`` ``None`` while it
runs and for a run that crashed (the process running it was killed: when it died is not
known), and one of :data:`OUTCOMES`.  ``job.runs`` shows them as dicts, ``jobs_df`` counts
them (``runs``) and sums them (``run_time``).

The list travels in the writes that already happen -- the running mark, the final
record, a retry's record -- so no run costs a store write of its own.  And a job that ran
once (nearly all of them) stores no list at all: while ``runs`` is empty, the job's one
run, if it started, is read from ``started``, ``finished`` and ``status``
(:func:`history`).  The list is written out as soon as that no longer holds: when a run
ends and the job goes on (a retry, a crash, an interruption), when a finished job is
retried, and when a second run starts.

>>> from nbqup.records import JobRecord, Status
>>> rec = JobRecord(id="j1", name="f", created=0.0)
>>> start_run(rec, 1.0); rec.status, rec.started = Status.RUNNING, 1.0
>>> history(rec), rec.runs
(((1.0, None, 'running'),), ())
>>> end_run(rec, 3.0, FAILED)  # a retry follows: the list is written out
>>> start_run(rec, 4.0); rec.started = 4.0
>>> history(rec)
((1.0, 3.0, 'failed'), (4.0, None, 'running'))
>>> run_time(history(rec), now=5.0), len(history(rec))
(3.0, 2)
"""

from __future__ import annotations

import math
from typing import Any

from .records import JobRecord, Status

__all__ = [
    "CANCELLED",
    "CRASHED",
    "FAILED",
    "INTERRUPTED",
    "OUTCOMES",
    "RUNNING",
    "SUCCEEDED",
    "Run",
    "as_dicts",
    "end_final",
    "end_run",
    "history",
    "spell_out",
    "run_time",
    "start_run",
    "unstart_run",
]

#: The run is going on.
RUNNING = "running"
#: The job returned a value.
SUCCEEDED = "succeeded"
#: The job raised (a retry may follow).
FAILED = "failed"
#: The process running it died (SIGKILL, a crash): found by recovery, or by the process
#: executor when its child died.
CRASHED = "crashed"
#: Stopped by ``close(wait=False)`` or the kernel shutting down: it resumes on reopen.
INTERRUPTED = "interrupted"
#: Cancelled while it ran.
CANCELLED = "cancelled"
OUTCOMES = (RUNNING, SUCCEEDED, FAILED, CRASHED, INTERRUPTED, CANCELLED)

#: ``(started, finished, outcome)``.
Run = tuple[float, float | None, str]

#: The outcome of a job's only run, read from its status while ``runs`` is empty.  A
#: job back in the queue with a start time and no list was written by an nbqup that kept
#: no runs: its last run was cut short (how is not known).
_IMPLIED = {
    Status.RUNNING: RUNNING,
    Status.SUCCEEDED: SUCCEEDED,
    Status.FAILED: FAILED,
    Status.CANCELLED: CANCELLED,
}


def history(rec: JobRecord) -> tuple[Run, ...]:
    """Every run of the job, oldest first (a record with no list: its one run, if any).

    A record written by an nbqup that kept no runs shows its last run only.
    """
    runs = rec.runs
    if runs:
        return _readable(runs)
    if rec.started is None:
        return ()
    status = rec.status
    finished = None if status is Status.RUNNING else rec.finished
    return ((rec.started, finished, _IMPLIED.get(status, INTERRUPTED)),)


def _readable(runs: Any) -> tuple[Run, ...]:
    """The stored list, less what does not read as a run (a record damaged by hand)."""
    if type(runs) is tuple and all(type(r) is tuple and len(r) == 3 for r in runs):
        return runs
    if not isinstance(runs, tuple | list):
        return ()
    return tuple(tuple(r) for r in runs if isinstance(r, tuple | list) and len(r) == 3)


def start_run(rec: JobRecord, now: float) -> None:
    """A worker starts the job at ``now`` (before ``started`` and ``status`` change).

    The first run needs no list (it is implied); a later one writes the list out."""
    if rec.runs or rec.started is not None:
        rec.runs = (*history(rec), (now, None, RUNNING))


def end_run(rec: JobRecord, finished: float | None, outcome: str) -> None:
    """The running run ended with ``outcome`` while the job goes on (a retry, a crash, an
    interruption), or ends in a way its status does not tell (crashed): the list is
    written out.  Nothing if no run is going."""
    runs = history(rec)
    if runs and runs[-1][2] == RUNNING:
        rec.runs = (*runs[:-1], (runs[-1][0], finished, outcome))


def end_final(rec: JobRecord, finished: float, status: Status) -> None:
    """The job ends with ``status`` (before it is set).  A run still marked running ends
    with it; a job with no list needs nothing: its status and times tell."""
    if not rec.runs:
        return
    runs = history(rec)
    if runs and runs[-1][2] == RUNNING:
        rec.runs = (*runs[:-1], (runs[-1][0], finished, status.value))


def spell_out(rec: JobRecord) -> None:
    """Write the list out before a finished job is queued again (``retry()``): its
    status will no longer tell how its last run ended."""
    rec.runs = history(rec)


def unstart_run(rec: JobRecord) -> None:
    """Take back a run whose running mark could not be written (it did not start)."""
    if rec.runs:
        runs = history(rec)
        if runs and runs[-1][2] == RUNNING:
            rec.runs = runs[:-1]
    else:
        rec.started = None


def run_time(runs: tuple[Run, ...] | Any, now: float) -> float:
    """Seconds the runs took: the finished ones, plus the running one up to ``now``; a
    crashed run (its end unknown) counts nothing.  Damaged entries count nothing too."""
    total = 0.0
    for run in runs:
        try:
            started, finished, outcome = run
            if finished is not None:
                span = float(finished) - float(started)
            elif outcome == RUNNING:
                span = now - float(started)
            else:
                continue
        except (TypeError, ValueError):
            continue
        if math.isfinite(span) and span > 0.0:
            total += span
    return total


def as_dicts(runs: tuple[Run, ...], as_time: Any) -> list[dict[str, Any]]:
    """The runs as ``job.runs`` gives them: ``started``, ``finished`` (through
    ``as_time``) and ``outcome``."""
    return [
        {"started": as_time(started), "finished": as_time(finished), "outcome": outcome}
        for started, finished, outcome in runs
    ]
