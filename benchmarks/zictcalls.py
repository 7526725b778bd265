"""How often nbqup's data path goes into zict's own code (issue 13: zict is not decoration).

A run of ``n`` jobs -- submit, run, read each result, close, reopen, read one back --
under ``sys.setprofile`` (and ``threading.setprofile`` for the worker threads), counting
the calls into functions whose file is in the ``zict`` package::

    python -m benchmarks.profile zict --jobs 200

The issue asks for at least two per job.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import zict

from benchmarks import jobs

ZICT_DIR = str(Path(zict.__file__).resolve().parent)


@contextlib.contextmanager
def counting(threads: bool = True) -> Iterator[Counter[str]]:
    """Count the calls into zict (by ``module.function``) made inside the block: by this
    thread only, or (``threads=True``) by every thread started meanwhile too."""
    calls: Counter[str] = Counter()
    lock = threading.Lock()

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        if event == "call" and frame.f_code.co_filename.startswith(ZICT_DIR):
            name = f"{Path(frame.f_code.co_filename).stem}.{frame.f_code.co_name}"
            with lock:
                calls[name] += 1

    if threads:
        threading.setprofile(profile)
    sys.setprofile(profile)
    try:
        yield calls
    finally:
        sys.setprofile(None)
        if threads:
            threading.setprofile(None)  # type: ignore[arg-type]


def count(n: int = 200, root: Path | None = None) -> Counter[str]:
    """Calls into zict (by ``module.function``) while ``n`` jobs go through and back."""
    import nbqup

    folder = Path(tempfile.mkdtemp(prefix=".zictcalls-", dir=root))
    try:
        with counting() as calls:
            with nbqup.JobQueue(folder / "store", workers=2) as jq:
                handles = [jq.submit(jobs.noop) for _ in range(n)]
                for h in handles:
                    h.result(timeout=300)
            with nbqup.JobQueue(folder / "store", workers=0) as jq:
                jq.get(handles[-1].id).result(timeout=60)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return calls


def report(n: int) -> int:
    """Print the calls per job and the busiest zict functions; returns the total."""
    calls = count(n)
    total = sum(calls.values())
    print(f"zict: {n} jobs, {total} calls into zict's own code ({total / n:.1f} per job)")
    for name, c in calls.most_common(8):
        print(f"  {c:7d}  {name}")
    return total
