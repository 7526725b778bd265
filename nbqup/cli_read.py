"""The reading commands, ``nbqup status`` and ``nbqup jobs``, and how they lay out a job:
the table (:func:`job_table`, local times, clipped to one line) and the JSON object
(:func:`job_dict`, ISO 8601 times in UTC).  They only read the store.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from typing import TYPE_CHECKING, Any

from .cli_store import open_store, owner_pid
from .errors import last_line
from .schedules import STATES as SCHEDULE_STATES

if TYPE_CHECKING:
    from .records import JobRecord

__all__ = ["STATUSES", "job_dict", "job_table", "run_jobs", "run_status"]

STATUSES = ("scheduled", "queued", "running", "succeeded", "failed", "cancelled", "skipped")
_NAME_WIDTH = 40
_INFO_WIDTH = 100


def run_status(args: argparse.Namespace) -> int:
    from .errors import StoreCorrupt

    with open_store(args.path) as jq:
        counts: Counter[str] = Counter()
        unreadable = 0
        for rec in jq.store.scan():
            if isinstance(rec, StoreCorrupt):
                unreadable += 1
            else:
                counts[str(rec.status)] += 1
        set_aside = len(jq.corrupt)
        schedules: Counter[str] = Counter(s.status for s in jq.schedules(SCHEDULE_STATES))
        owner = owner_pid(jq)
        path = jq.path
    rows = [("store", str(path))]
    if owner is None:
        rows.append(("owner", "none (no process is running these jobs)"))
    else:
        rows.append(("owner", f"pid {owner}"))
    rows += [(s, str(counts[s])) for s in STATUSES if counts[s]]
    rows.append(("total", str(sum(counts.values()))))
    if unreadable or set_aside:
        parts = [f"{unreadable} unreadable"] if unreadable else []
        parts += [f"{set_aside} set aside"] if set_aside else []
        rows.append(("corrupt", ", ".join(parts)))
    if schedules:
        shown = [f"{schedules[s]} {s}" for s in SCHEDULE_STATES if schedules[s]]
        rows.append(("schedules", ", ".join(shown)))
    for label, value in rows:
        print(f"{label:<10} {value}")
    return 0


def run_jobs(args: argparse.Namespace) -> int:
    from .errors import StoreCorrupt

    with open_store(args.path) as jq:
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
    from .records import as_datetime

    when = as_datetime(ts)
    return None if when is None else when.isoformat()


def _local(ts: float | None) -> str:
    """Local time to the second; blank for a stored value that is not a time."""
    from .records import as_datetime

    when = as_datetime(ts)
    try:
        return "" if when is None else when.astimezone().strftime("%Y-%m-%d %H:%M:%S")
    except (OverflowError, ValueError, OSError):  # local time past year 9999 or before 1
        return ""
