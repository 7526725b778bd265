"""``python -m nbqup demo``: submit work, kill the process, reopen, watch it resume.

A child process opens a queue, submits a few "training runs" whose function exists only
in the child's ``__main__`` (as if defined in a notebook), and is SIGKILLed while they run.
This process then reopens the same store -- without that function anywhere in its own
code -- and the jobs carry on from their last checkpoint.  The store stays where the
first and the last lines say (a new temporary folder unless ``--path`` is given), to be
looked at with ``nbqup jobs`` or opened in a notebook.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_CHILD = r"""
import sys, time
import nbqup

def train(lr, steps=8):
    state = nbqup.restore({"step": 0, "loss": 1.0})
    start = state["step"]
    for step in range(start, steps):
        time.sleep(0.15)                       # one "epoch" of work
        state = {"step": step + 1, "loss": state["loss"] * (1 - lr), "resumed_at": start}
        nbqup.checkpoint(state)
        nbqup.progress(step + 1, steps)
    return state

jq = nbqup.JobQueue(sys.argv[1], workers=2)
jobs = [jq.options(name=f"train lr={lr}", key=f"train-{lr}").submit(train, lr)
        for lr in (0.1, 0.2, 0.3)]
jobs.append(jq.options(name="quick sum").submit(sum, range(10)))
while not any(j.checkpoint and j.checkpoint["step"] >= 3 for j in jobs[:3]):
    time.sleep(0.02)
print("RUNNING", flush=True)
time.sleep(60)   # killed long before this ends
"""


def main(path: str | None = None) -> int:
    """Run the demo in the folder ``path`` (a new temporary folder by default); return an
    exit code.  The store (``<folder>/store``) is left there, and the last lines say
    where, so that the CLI and a notebook can look at it afterwards."""
    import nbqup

    folder = Path(path or tempfile.mkdtemp(prefix="nbqup-demo-"))
    store = folder / "store"
    print(f"nbqup {nbqup.__version__} demo -- store: {store}\n")
    print("1. a child process submits 3 training runs + 1 quick job, defined in its __main__")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(store)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert child.stdout is not None
    line = child.stdout.readline()
    if "RUNNING" not in line:
        child.kill()
        print("the child process failed before the jobs ran", file=sys.stderr)
        return 1
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    print(f"2. SIGKILLed the child (pid {child.pid}) while the runs were mid-way\n")

    print("3. what the store holds (read with workers=0, nothing runs):")
    with nbqup.JobQueue(store, workers=0) as jq:
        for job in jq.jobs():
            print(f"   {job.name:<14} {job.status:<10} checkpoint={job.checkpoint}")
    print("\n   reopening it with workers here, where `train` is not defined ...")
    started = time.perf_counter()
    with nbqup.JobQueue(store, workers=2) as jq:
        finished = jq.wait(timeout=60)
        print(f"\n4. all done in {time.perf_counter() - started:.1f}s: {finished}")
        for job in jq.jobs():
            result = job.result()
            note = ""
            if isinstance(result, dict):
                note = f"(resumed at step {result['resumed_at']}, attempts={job.attempts})"
                result = {"step": result["step"], "loss": round(result["loss"], 4)}
            print(f"   {job.name:<14} {job.status:<10} {result} {note}")
        lost = [j for j in jq.jobs() if j.status != "succeeded"]
    print("\nno job was lost." if not lost else f"\nLOST: {lost}")
    temporary = f" (a temporary folder: rm -r {folder} removes it)" if path is None else ""
    print(f"\nthe store is left in {store}{temporary}")
    print(f"its jobs: python -m nbqup jobs {store}")
    return 0 if finished and not lost else 1
