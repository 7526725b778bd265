"""Where nbqup's time goes: run one workload for a profiler, and summarise py-spy output.

    # sample every thread 1000 times a second while 20,000 no-op jobs go through
    py-spy record -r 1000 --format raw -o /tmp/tp.txt -- \\
        python -m benchmarks.profile throughput --jobs 20000
    python -m benchmarks.profile --analyze /tmp/tp.txt

    # the submit path alone, in this thread, under cProfile (exact call counts)
    python -m benchmarks.profile submit --jobs 5000 --cprofile

    # store traffic per job: commits, records per commit, reads by table, wall time of each
    python -m benchmarks.profile throughput --jobs 10000 --count

    # one job printing 500,000 lines, under the thread and the process executor (info only)
    python -m benchmarks.profile output --lines 500000

    # jq.counts() with 10,000 unfinished jobs: the owner's, then with a client's among them
    python -m benchmarks.profile counts --jobs 10000

    # calls into zict's own code per job (submit, run, result, reopen, read one back)
    python -m benchmarks.profile zict --jobs 200

``--analyze`` reads py-spy's raw (collapsed-stack) output and prints, per thread role
(the caller submitting, the worker slots), the functions with the most samples on the
stack (inclusive) and on top of it (self), as a share of that role's samples.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import re
import resource
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks import jobs

ROOT = Path(__file__).resolve().parent.parent


class StoreCounter:
    """Counts (by wrapping, in this process only) the store calls made while running."""

    def __init__(self) -> None:
        from nbqup import lmdbbackend, store

        self.counts: Counter[str] = Counter()
        self.seconds: Counter[str] = Counter()
        self._undo: list[tuple[type, str, object]] = []
        self._wrap(store.Store, "commit", lambda a, kw: "commit")
        self._wrap(lmdbbackend.LMDBBackend, "get", lambda a, kw: f"get {a[1]}")
        self.records = 0

    def _wrap(self, cls: type, name: str, label: Any) -> None:
        orig = getattr(cls, name)
        counter = self

        def wrapper(*a: Any, **kw: Any) -> Any:
            if name == "commit":
                records = list(kw.pop("records", a[1] if len(a) > 1 else ()))
                a = (a[0], records, *a[2:])
                counter.records += len(records)
            t0 = time.perf_counter()
            try:
                return orig(*a, **kw)
            finally:
                key = label(a, kw)
                counter.counts[key] += 1
                counter.seconds[key] += time.perf_counter() - t0

        setattr(cls, name, wrapper)
        self._undo.append((cls, name, orig))

    def report(self, n: int) -> None:
        for cls, name, orig in self._undo:
            setattr(cls, name, orig)
        commits = self.counts["commit"]
        print(
            f"per job: {commits / n:.2f} commits ({self.records / max(commits, 1):.2f} "
            f"records each, {self.seconds['commit'] / max(commits, 1) * 1e6:.0f} us wall each)"
        )
        for key, c in sorted(self.counts.items()):
            if key.startswith("get"):
                print(
                    f"per job: {c / n:.2f} x {key:<14} "
                    f"({self.seconds[key] / c * 1e6:.0f} us wall each)"
                )


def run(workload: str, n: int, workers: int, durability: str) -> float:
    import nbqup

    folder = Path(tempfile.mkdtemp(prefix=".profile-", dir=ROOT))
    try:
        jq = nbqup.JobQueue(folder / "store", workers=workers, durability=durability)
        try:
            if workers:
                jq.submit(jobs.noop).result(timeout=60)  # warm up: the function is pickled
            before = resource.getrusage(resource.RUSAGE_SELF)
            t0 = time.perf_counter()
            handles = [jq.submit(jobs.noop) for _ in range(n)]
            submitted = time.perf_counter() - t0
            if workload == "throughput":
                for h in handles:
                    h.result(timeout=300)
            took = time.perf_counter() - t0
            after = resource.getrusage(resource.RUSAGE_SELF)
        finally:
            jq.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(
        f"{workload}: {n} jobs, {workers} workers, {durability}: submit {submitted:.2f} s "
        f"({submitted / n * 1e6:.0f} us each), total {took:.2f} s ({n / took:.0f} jobs/s)"
    )
    print(
        f"per job: CPU user {(after.ru_utime - before.ru_utime) / n * 1e6:.0f} us, "
        f"system {(after.ru_stime - before.ru_stime) / n * 1e6:.0f} us; "
        f"context switches: {(after.ru_nvcsw - before.ru_nvcsw) / n:.1f} voluntary, "
        f"{(after.ru_nivcsw - before.ru_nivcsw) / n:.2f} involuntary"
    )
    return took


def output(lines: int) -> dict[str, float]:
    """Seconds for one job printing ``lines`` lines to reach its log, per executor.

    The process executor's child sends what a job prints to this process; the figure
    shows what that relay costs next to the thread executor (info only, no target).
    """
    import nbqup
    from nbqup.executors import ProcessExecutor

    took: dict[str, float] = {}
    for name in ("thread", "process"):
        executor: Any = ProcessExecutor() if name == "process" else name
        folder = Path(tempfile.mkdtemp(prefix=".profile-", dir=ROOT))
        try:
            with nbqup.JobQueue(folder / "store", workers=1, executor=executor) as jq:
                jq.submit(jobs.noop).result(timeout=120)  # warm up: a child process starts
                t0 = time.perf_counter()
                job = jq.submit(jobs.chatter, lines)
                job.result(timeout=600)
                took[name] = time.perf_counter() - t0
                sent = getattr(executor, "messages_received", None)
                tail = job.logs.rsplit("\n", 2)[-2]
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        extra = "" if sent is None else f", {sent} messages from the child"
        print(f"output: {lines} lines, {name}: {took[name]:.2f} s{extra} (last: {tail!r})")
    print(f"output: process / thread = {took['process'] / took['thread']:.1f}x")
    return took


def counts(n: int) -> dict[str, float]:
    """Median milliseconds of ``jq.counts()`` in the owner of a store holding ``n``
    unfinished jobs (one running, the rest delayed): with only its own jobs, then with 100
    jobs a client has just submitted (read from the store's index of unfinished jobs)."""
    import statistics

    import nbqup

    def median_ms(jq: nbqup.JobQueue) -> float:
        times = []
        for _ in range(50):
            t0 = time.perf_counter()
            jq.counts()
            times.append(time.perf_counter() - t0)
        return statistics.median(times) * 1000

    took: dict[str, float] = {}
    folder = Path(tempfile.mkdtemp(prefix=".profile-", dir=ROOT))
    try:
        with nbqup.JobQueue(folder / "store", workers=1, poll_interval=3600) as jq:
            jq.submit(jobs.pause, 3600)
            for start in range(1, n, 1000):
                jq.after("1h").map(jobs.noop, [()] * min(1000, n - start))
            took["owner"] = median_ms(jq)
            with nbqup.JobQueue(folder / "store", workers=0) as client:
                client.after("1h").map(jobs.noop, [()] * 100)
            took["owner + client's"] = median_ms(jq)
            print(f"counts: {n} unfinished jobs: {jq.counts()}")
            jq.close(wait=False)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    for name, ms in took.items():
        print(f"counts: {name}: median {ms:.2f} ms")
    return took


_FRAME = re.compile(r"^(?P<fn>[^ ]+) \((?P<file>[^:]+)(?::\d+)?\)$")


def analyze(path: Path, top: int = 25) -> None:
    """Summarise py-spy ``--format raw`` output (``frame;frame;... count`` lines)."""
    roles: dict[str, tuple[Counter[str], Counter[str], list[int]]] = {}
    for line in path.read_text().splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        frames = stack.split(";")
        role = _role(frames)
        incl, self_, total = roles.setdefault(role, (Counter(), Counter(), [0]))
        total[0] += count
        names = [_name(f) for f in frames[1:]]  # frames[0] is the thread
        for name in set(names):
            incl[name] += count
        if names:
            self_[names[-1]] += count
    for role, (incl, self_, total) in sorted(roles.items(), key=lambda kv: -kv[1][2][0]):
        n = total[0]
        print(f"\n== {role}: {n} samples")
        print(f"{'inclusive':>9}  {'self':>6}  function")
        for name, c in incl.most_common(top):
            print(f"{c / n:9.1%}  {self_[name] / n:6.1%}  {name}")
        print("-- top self:")
        for name, c in self_.most_common(12):
            print(f"{c / n:9.1%}  {name}")


def _role(frames: list[str]) -> str:
    text = ";".join(frames)
    if "_slot (" in text:
        return "worker slots"
    if "_scheduler (" in text:
        return "scheduler"
    if "<module>" in text:
        return "caller (main thread)"
    return "other"


def _name(frame: str) -> str:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    file = m["file"]
    for marker in ("site-packages/", "/work/main/", "lib/python3"):
        if marker in file:
            file = file.split(marker, 1)[1]
    return f"{m['fn']} ({file})"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.profile",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "workload",
        nargs="?",
        choices=("throughput", "submit", "output", "counts", "zict"),
        default="throughput",
    )
    p.add_argument("--jobs", type=int, default=20_000)
    p.add_argument("--lines", type=int, default=500_000, help="lines printed (output)")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--durability", default="process")
    p.add_argument("--cprofile", action="store_true", help="cProfile the calling thread")
    p.add_argument("--count", action="store_true", help="count store commits and reads")
    p.add_argument("--analyze", metavar="RAW", help="summarise py-spy raw output and exit")
    args = p.parse_args(argv)
    if args.analyze:
        analyze(Path(args.analyze))
        return 0
    if args.workload == "output":
        output(args.lines)
        return 0
    if args.workload == "counts":
        counts(args.jobs)
        return 0
    if args.workload == "zict":
        from benchmarks import zictcalls

        zictcalls.report(args.jobs)
        return 0
    if args.cprofile:
        prof = cProfile.Profile()
        prof.enable()
        run(args.workload, args.jobs, args.workers, args.durability)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    elif args.count:
        counter = StoreCounter()
        os_before = os.times()
        took = run(args.workload, args.jobs, args.workers, args.durability)
        os_after = os.times()
        counter.report(args.jobs)
        cpu = (os_after.user - os_before.user) + (os_after.system - os_before.system)
        print(f"CPU {cpu:.2f} s for {took:.2f} s wall ({cpu / took:.2f} of {os.cpu_count()} CPUs)")
    else:
        run(args.workload, args.jobs, args.workers, args.durability)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
