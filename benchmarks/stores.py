"""Large nbqup stores, built fast, and the workloads that need them.

A store with a long history is built by writing job records straight into
:class:`nbqup.store.Store` in big batches (one LMDB transaction per batch), not by running
jobs: only the reopen, ``jobs_df`` and memory measurements are timed, never the build.
The records look like those of a sweep: a name, a keyword argument, a result and, for one
job in a hundred, a failure with a traceback.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

from benchmarks import jobs

BATCH = 20_000

_TRACEBACK = "".join(
    f'  File "/home/user/project/train.py", line {40 + i}, in step_{i}\n    loss = model(x)\n'
    for i in range(6)
)


def build_history(
    path: Path, finished: int, unfinished: int, *, running: float = 0.1, results: bool = True
) -> float:
    """Write ``finished`` final and ``unfinished`` pending jobs; returns seconds taken.

    A fraction ``running`` of the unfinished jobs is recorded as running (as if their
    process had died); the rest are queued.  Unfinished jobs run :func:`jobs.mark_started`.
    """
    from nbqup import payload
    from nbqup.records import JobRecord, Status
    from nbqup.store import Store

    t0 = time.perf_counter()
    store = Store(path)
    noop_hash, noop_blob = payload.dumps_fn(jobs.noop)
    mark_hash, mark_blob = payload.dumps_fn(jobs.mark_started)
    store.commit(blobs=[("fn", noop_hash, noop_blob), ("fn", mark_hash, mark_blob)])
    result_blob = payload.dumps_result(0.5)
    start = time.time() - 86_400.0
    common = {"python": payload.PYTHON, "pickler": payload.PICKLER}

    def make(n: int) -> JobRecord:
        created = start + n * 0.05
        rec_id = f"{int(created * 1000):011x}{n:06x}"
        if n >= finished:
            k = n - finished
            status = Status.RUNNING if k < unfinished * running else Status.QUEUED
            return JobRecord(
                id=rec_id,
                name="mark_started",
                created=created,
                status=status,
                fn=mark_hash,
                fn_name="mark_started",
                attempts=1 if status is Status.RUNNING else 0,
                started=created if status is Status.RUNNING else None,
                **common,
            )
        rec = JobRecord(
            id=rec_id,
            name="train",
            created=created,
            started=created + 0.01,
            finished=created + 0.04,
            attempts=1,
            fn=noop_hash,
            fn_name="train",
            kwargs={"lr": 10.0 ** -(n % 4), "seed": n % 10},
            tags=("sweep",),
            **common,
        )
        if n % 100 == 99:
            rec.status = Status.FAILED
            rec.error = f"Traceback (most recent call last):\n{_TRACEBACK}ValueError: nan loss"
            rec.errors = ("ValueError: nan loss",)
            rec.message = "ValueError: nan loss"
        else:
            rec.status = Status.SUCCEEDED
            rec.has_result, rec.result_repr, rec.progress = True, "0.5", 1.0
        return rec

    total = finished + unfinished
    for lo in range(0, total, BATCH):
        records = [make(n) for n in range(lo, min(total, lo + BATCH))]
        blobs = []
        if results:
            blobs = [("result", r.id, result_blob) for r in records if r.has_result]
        store.commit(records, blobs)
    store.close()
    return time.perf_counter() - t0


def copy_store(template: Path, dest: Path) -> Path:
    shutil.copytree(template, dest)
    return dest


def measure_reopen(path: Path, workers: int = 4) -> float:
    """Seconds from ``JobQueue(path)`` until the first resumed job runs."""
    import nbqup

    jobs.STARTED.clear()
    t0 = time.perf_counter()
    jq = nbqup.JobQueue(path, workers=workers)
    try:
        if not jobs.STARTED.wait(120):
            raise TimeoutError(f"no resumed job ran within 120 s of reopening {path}")
        return time.perf_counter() - t0
    finally:
        jq.close()


def measure_jobs_df(path: Path) -> tuple[float, int] | None:
    """Seconds for ``jq.jobs_df()`` and its row count; None if nbqup has no jobs_df yet.

    pandas is imported before the clock starts: nbqup imports it lazily, at the first
    frame a process asks for, and that one-off import (0.3-0.5 s here) is not the cost
    of reading 100,000 jobs.
    """
    import pandas  # noqa: F401

    import nbqup

    jq = nbqup.JobQueue(path, workers=0)
    try:
        if not hasattr(jq, "jobs_df"):
            return None
        t0 = time.perf_counter()
        df = jq.jobs_df()
        return time.perf_counter() - t0, len(df)
    finally:
        jq.close()


_RSS_CHILD = textwrap.dedent(
    """
    import json, sys, time
    import psutil
    import nbqup
    proc = psutil.Process()
    before = proc.memory_info().rss
    t0 = time.perf_counter()
    jq = nbqup.JobQueue(sys.argv[1], workers=4)
    opened = time.perf_counter() - t0
    time.sleep(float(sys.argv[2]))
    info = proc.memory_full_info()
    print(json.dumps({"rss_imports": before, "rss": info.rss, "uss": info.uss,
                      "open_s": opened}))
    jq.close()
    """
)


def measure_rss(path: Path, idle: float = 2.0) -> dict[str, Any]:
    """Resident memory of a fresh process with the queue on ``path`` open and idle."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_root()), env.get("PYTHONPATH")]))
    out = subprocess.run(
        [sys.executable, "-c", _RSS_CHILD, str(path), str(idle)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        check=True,
    )
    data: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return data


def _root() -> Path:
    return Path(__file__).resolve().parent.parent
