"""The benchmark runner: ``python -m benchmarks`` from the repository root.

Workloads (all systems in this process, on one disk, interleaved within each repeat):

``throughput``  submit N no-op jobs, then wait for all (reading each result), 4 workers
``roundtrip``   median of one submit -> result, one job at a time

``nbqup-process`` and ``nbqup-dask`` (other executors, informational: no target) run in
these two only; ``nbqup-dask`` at 2,000 jobs at most.
``submit``      ``submit()`` call, one job at a time, workers running: median, mean, p99
``reopen``      nbqup only: reopen a store of 100,000 finished + 1,000 unfinished jobs
                until the first resumed job runs
``jobs_df``     nbqup only: ``jq.jobs_df()`` over that store (skipped if it does not exist)
``rss``         nbqup only: resident memory of a fresh process with 1,000,000 finished
                jobs in the store, queue open and idle (full runs only)

Prints markdown tables (medians, min-max over the repeats, and the ratios DESIGN.md asks
for with PASS/MISS) and writes the same as JSON.  Exits 1 if a measurement failed, not
when a target is missed.

    python -m benchmarks                      # the full run (~8 minutes on 2 CPUs)
    python -m benchmarks --quick              # smaller sizes, no 1M-job store
    python -m benchmarks --only roundtrip,submit --repeats 5 --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks import stores
from benchmarks.systems import System, all_systems

ROOT = Path(__file__).resolve().parent.parent
WORKLOADS = ("throughput", "roundtrip", "submit", "reopen", "jobs_df", "rss")
#: Huey "as shipped" polls results every 50 ms+: past this many jobs only its ms-polled
#: twin is run (the shipped one differs by its polling, measured at the smaller sizes).
SHIPPED_MAX_JOBS = 2000
SHIPPED_MAX_ROUNDTRIPS = 50


@dataclass
class Measure:
    workload: str
    system: str
    unit: str
    values: list[float] = field(default_factory=list)
    higher_is_better: bool = False
    note: str = ""
    errors: list[str] = field(default_factory=list)

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None


@dataclass
class Ratio:
    name: str
    value: float | None
    target: str
    ok: bool | None
    meaning: str

    @property
    def verdict(self) -> str:
        return "n/a" if self.ok is None else ("PASS" if self.ok else "MISS")


class Results:
    def __init__(self) -> None:
        self.measures: dict[tuple[str, str], Measure] = {}

    def get(self, workload: str, system: str, unit: str, **kw: Any) -> Measure:
        key = (workload, system)
        if key not in self.measures:
            self.measures[key] = Measure(workload, system, unit, **kw)
        return self.measures[key]

    def median(self, workload: str, system: str) -> float | None:
        m = self.measures.get((workload, system))
        return None if m is None else m.median


# ------------------------------------------------------------------------- workloads


def _fresh(workdir: Path, label: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"{label.replace('/', '-')}-", dir=workdir))


def _run(system: System, workdir: Path, body: Callable[[System], Any]) -> Any:
    folder = _fresh(workdir, system.name)
    gc.collect()
    system.start(folder)
    try:
        return body(system)
    finally:
        system.stop()
        shutil.rmtree(folder, ignore_errors=True)


def throughput(system: System, workdir: Path, n: int) -> float:
    def body(s: System) -> float:
        t0 = time.perf_counter()
        handles = [s.submit() for _ in range(n)]
        s.wait_all(handles)
        return n / (time.perf_counter() - t0)

    return _run(system, workdir, body)


def roundtrip(system: System, workdir: Path, n: int) -> float:
    def body(s: System) -> float:
        for _ in range(3):  # warm up
            s.result(s.submit())
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            s.result(s.submit())
            times.append(time.perf_counter() - t0)
        return statistics.median(times) * 1e3

    return _run(system, workdir, body)


def submit_call(system: System, workdir: Path, n: int) -> dict[str, float]:
    """Median, mean and 99th percentile of ``n`` submit() calls, in microseconds."""

    def body(s: System) -> dict[str, float]:
        s.wait_all([s.submit() for _ in range(10)])  # warm up
        times, handles = [], []
        for _ in range(n):
            t0 = time.perf_counter()
            handles.append(s.submit())
            times.append(time.perf_counter() - t0)
        s.wait_all(handles)
        times.sort()
        return {
            "median": statistics.median(times) * 1e6,
            "mean": statistics.fmean(times) * 1e6,
            "p99": times[min(len(times) - 1, int(len(times) * 0.99))] * 1e6,
        }

    return _run(system, workdir, body)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- runner


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="small sizes, no 1M-job store")
    p.add_argument("--repeats", type=int, default=3, help="repeats of every measure (3)")
    p.add_argument("--only", default="", help=f"comma-separated workloads: {','.join(WORKLOADS)}")
    p.add_argument("--systems", default="", help="comma-separated systems (default: all)")
    p.add_argument("--sizes", default="", help="throughput job counts (2000,20000)")
    p.add_argument("--roundtrips", type=int, help="round trips per repeat (200)")
    p.add_argument("--submits", type=int, help="timed submit calls per repeat (1000)")
    p.add_argument("--history", type=int, help="finished jobs in the reopen store (100000)")
    p.add_argument("--unfinished", type=int, help="unfinished jobs in the reopen store (1000)")
    p.add_argument("--rss-jobs", type=int, help="finished jobs in the memory store (1000000)")
    p.add_argument("--json", dest="json_path", help="write the results here as JSON")
    p.add_argument("--tmpdir", help="where stores are made (default: the repository's disk)")
    args = p.parse_args(argv)
    quick = args.quick
    args.sizes = [int(s) for s in args.sizes.split(",") if s] or ([500] if quick else [2000, 20000])
    args.roundtrips = args.roundtrips or (50 if quick else 200)
    args.submits = args.submits or (300 if quick else 1000)
    args.history = args.history or (10_000 if quick else 100_000)
    args.unfinished = args.unfinished or (100 if quick else 1000)
    args.rss_jobs = args.rss_jobs or 1_000_000
    only = [w for w in args.only.split(",") if w]
    unknown = set(only) - set(WORKLOADS)
    if unknown:
        p.error(f"unknown workload(s) {sorted(unknown)}; known: {', '.join(WORKLOADS)}")
    args.workloads = only or [w for w in WORKLOADS if not (quick and w == "rss")]
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    systems = all_systems()
    if args.systems:
        wanted = set(args.systems.split(","))
        unknown = wanted - {s.name for s in systems}
        if unknown:
            known = ", ".join(s.name for s in systems)
            print(f"unknown system(s) {sorted(unknown)}; known: {known}", file=sys.stderr)
            return 2
        systems = [s for s in systems if s.name in wanted]
    tmp_parent = Path(args.tmpdir) if args.tmpdir else ROOT
    workdir = Path(tempfile.mkdtemp(prefix=".bench-", dir=tmp_parent))
    results = Results()
    machine = machine_info(workdir)
    print(_machine_line(machine), flush=True)
    started = time.perf_counter()
    try:
        _measure_all(args, systems, workdir, results)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    elapsed = time.perf_counter() - started
    machine["loadavg_end"] = os.getloadavg()
    ratios = compute_ratios(results, args)
    print()
    print(format_measures(results))
    print()
    print(format_ratios(ratios))
    load = ", ".join(f"{x:.2f}" for x in machine["loadavg_end"])
    print(
        f"\n{len(systems)} systems, {args.repeats} repeats, {elapsed:.0f} s in all; "
        f"load average at the end {load}"
    )
    failed = [m for m in results.measures.values() if m.errors]
    for m in failed:
        print(f"ERROR {m.workload} {m.system}: {m.errors[0]}", file=sys.stderr)
    if args.json_path:
        doc = {
            "machine": machine,
            "config": {k: v for k, v in vars(args).items() if k != "json_path"},
            "elapsed_s": elapsed,
            "measures": [asdict(m) | {"median": m.median} for m in results.measures.values()],
            "ratios": [asdict(r) | {"verdict": r.verdict} for r in ratios],
        }
        Path(args.json_path).write_text(json.dumps(doc, indent=1, default=str) + "\n")
        print(f"wrote {args.json_path}")
    return 1 if failed else 0


def _measure_all(
    args: argparse.Namespace, systems: list[System], workdir: Path, results: Results
) -> None:
    def record(workload: str, system: str, unit: str, fn: Callable[[], float], **kw: Any) -> None:
        m = results.get(workload, system, unit, **kw)
        try:
            value = fn()
        except Exception as exc:
            m.errors.append(f"{type(exc).__name__}: {exc}")
            traceback.print_exc()
            return
        m.values.append(value)
        print(f"  {workload:<18} {system:<20} {value:12.4g} {unit}", flush=True)

    nbqup_history = None
    if {"reopen", "jobs_df"} & set(args.workloads):
        nbqup_history = workdir / "history-template"
        took = stores.build_history(nbqup_history, args.history, args.unfinished)
        print(
            f"built a store of {args.history:,} finished + {args.unfinished:,} unfinished "
            f"jobs in {took:.1f} s (not timed)",
            flush=True,
        )

    for rep in range(args.repeats):
        print(f"repeat {rep + 1}/{args.repeats}", flush=True)
        shift = rep % len(systems)
        order = systems[shift:] + systems[:shift]  # interleaved, a different order each time
        if "throughput" in args.workloads:
            for n in args.sizes:
                for s in order:
                    cap = _max_jobs(s)
                    if cap is not None and n > cap:
                        continue
                    note = s.note
                    if cap is not None and s.informational and max(args.sizes) > cap:
                        note += f"; {cap:,} jobs at most"
                    record(
                        f"throughput {n:,}",
                        s.name,
                        "jobs/s",
                        lambda s=s, n=n: throughput(s, workdir, n),
                        higher_is_better=True,
                        note=note,
                    )
        if "roundtrip" in args.workloads:
            for s in order:
                n = args.roundtrips
                if s.name.endswith("/shipped"):
                    n = min(n, SHIPPED_MAX_ROUNDTRIPS)
                if s.max_roundtrips is not None:
                    n = min(n, s.max_roundtrips)
                note = f"median of {n}"
                if s.informational:
                    note = f"{s.note}; {note}"
                record(
                    "roundtrip",
                    s.name,
                    "ms",
                    lambda s=s, n=n: roundtrip(s, workdir, n),
                    note=note,
                )
        if "submit" in args.workloads:
            for s in order:
                if s.informational:  # throughput and round trip only (issue 8)
                    continue
                try:
                    stats = submit_call(s, workdir, args.submits)
                except Exception as exc:
                    m = results.get("submit call", s.name, "us")
                    m.errors.append(f"{type(exc).__name__}: {exc}")
                    traceback.print_exc()
                    continue
                for key, label, note in (
                    ("median", "submit call", f"median of {args.submits}, 4 workers draining"),
                    ("mean", "submit call, mean", "mean of the same calls"),
                    ("p99", "submit call, p99", "99th percentile of the same calls"),
                ):
                    record(label, s.name, "us", lambda st=stats, k=key: st[k], note=note)
        if nbqup_history is not None and _has_nbqup(systems):
            copy = stores.copy_store(nbqup_history, workdir / f"history-{rep}")
            size = f"{_short(args.history)}+{_short(args.unfinished)}"
            if "reopen" in args.workloads:
                record(
                    f"reopen {size}",
                    "nbqup",
                    "s",
                    lambda c=copy: stores.measure_reopen(c),
                    note="until the first resumed job runs",
                )
            if "jobs_df" in args.workloads:
                _record_jobs_df(results, copy, args)
            shutil.rmtree(copy, ignore_errors=True)

    if "rss" in args.workloads and _has_nbqup(systems):
        path = workdir / "rss-store"
        took = stores.build_history(path, args.rss_jobs, 0, results=False)
        print(
            f"built a store of {args.rss_jobs:,} finished jobs in {took:.1f} s (not timed)",
            flush=True,
        )
        empty = workdir / "rss-empty"
        stores.build_history(empty, 0, 0)
        for _ in range(args.repeats):
            record(
                "idle RSS, empty store",
                "nbqup",
                "MB",
                lambda: stores.measure_rss(empty)["rss"] / 2**20,
                note="fresh process",
            )
            record(
                f"idle RSS, {args.rss_jobs:,} jobs",
                "nbqup",
                "MB",
                lambda: stores.measure_rss(path)["rss"] / 2**20,
                note="fresh process",
            )


def _max_jobs(system: System) -> int | None:
    """The largest throughput size run for ``system`` (``None``: every size)."""
    if system.max_jobs is not None:
        return system.max_jobs
    return SHIPPED_MAX_JOBS if system.name.endswith("/shipped") else None


def _short(n: int) -> str:
    """``100000`` -> ``100k``, ``1500`` -> ``1,500``."""
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else f"{n:,}"


def _has_nbqup(systems: list[System]) -> bool:
    return any(s.name == "nbqup" for s in systems)


def _record_jobs_df(results: Results, path: Path, args: argparse.Namespace) -> None:
    m = results.get(f"jobs_df {args.history + args.unfinished:,} jobs", "nbqup", "s")
    try:
        got = stores.measure_jobs_df(path)
    except (ImportError, NotImplementedError) as exc:  # pandas (optional) or not built yet
        m.note = f"skipped: {type(exc).__name__}: {exc}"
        return
    except Exception as exc:
        m.errors.append(f"{type(exc).__name__}: {exc}")
        traceback.print_exc()
        return
    if got is None:
        m.note = "skipped: JobQueue has no jobs_df yet"
        return
    seconds, rows = got
    m.values.append(seconds)
    m.note = f"{rows:,} rows"
    print(f"  {m.workload:<18} nbqup {seconds:12.4g} s", flush=True)


# --------------------------------------------------------------------------- ratios


def _best(results: Results, workload: str, prefix: str) -> tuple[float | None, str]:
    """The best median among systems named ``prefix*`` (the strongest peer)."""
    found = [
        (m.median, m.system)
        for (w, _), m in results.measures.items()
        if w == workload and m.system.startswith(prefix) and m.median is not None
    ]
    if not found:
        return None, prefix
    better = max if workload.startswith("throughput") else min
    value, name = better(found)
    return value, name


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def compute_ratios(results: Results, args: argparse.Namespace) -> list[Ratio]:
    out: list[Ratio] = []
    measured = {w for w, _ in results.measures}
    for n in args.sizes:
        w = f"throughput {n:,}"
        if w not in measured:
            continue
        nb = results.median(w, "nbqup")
        fh, fh_name = _best(results, w, "huey-file")
        r = _ratio(nb, fh)
        out.append(
            Ratio(
                f"{w}: nbqup / {fh_name}",
                r,
                ">= 5",
                None if r is None else r >= 5,
                "no-op jobs/s, submit all then wait all; the faster FileHuey variant",
            )
        )
        nf = results.median(w, "nbqup-fsync")
        sh, sh_name = _best(results, w, "huey-sqlite")
        r = _ratio(nf, sh)
        out.append(
            Ratio(
                f"{w}: nbqup-fsync / {sh_name}",
                r,
                ">= 1.5",
                None if r is None else r >= 1.5,
                "both fsync every commit; the faster SqliteHuey variant",
            )
        )
        for other in ("nbqup-process", "nbqup-dask"):
            r = _ratio(results.median(w, other), nb)
            if r is not None:
                out.append(
                    Ratio(
                        f"{w}: {other} / nbqup",
                        r,
                        "(info)",
                        None,
                        "another executor against the default thread executor",
                    )
                )
        r = _ratio(nb, results.median(w, "floor"))
        out.append(
            Ratio(
                f"{w}: nbqup / floor",
                r,
                "(info)",
                None,
                "share of the bare store loop's rate nbqup reaches",
            )
        )
    if "roundtrip" in measured:
        sq = results.median("roundtrip", "huey-sqlite/ms")
        r = _ratio(results.median("roundtrip", "nbqup"), sq)
        out.append(
            Ratio(
                "roundtrip: nbqup / huey-sqlite/ms",
                r,
                "<= 0.25",
                None if r is None else r <= 0.25,
                "median submit->result latency vs SqliteHuey polled every 1 ms",
            )
        )
        for other in ("nbqup-process", "nbqup-dask"):
            r = _ratio(results.median("roundtrip", other), results.median("roundtrip", "nbqup"))
            if r is not None:
                out.append(
                    Ratio(
                        f"roundtrip: {other} / nbqup",
                        r,
                        "(info)",
                        None,
                        "another executor against the default thread executor",
                    )
                )
        r = _ratio(results.median("roundtrip", "nbqup-fsync"), sq)
        out.append(
            Ratio(
                "roundtrip: nbqup-fsync / huey-sqlite/ms",
                r,
                "(info)",
                None,
                "like for like on durability",
            )
        )
    if "submit call" in measured:
        sub = results.median("submit call", "nbqup")
        out.append(
            Ratio(
                "submit call: nbqup median (us)",
                sub,
                "<= 100",
                None if sub is None else sub <= 100,
                "time until submit() returns a job that survives a SIGKILL",
            )
        )
    for (w, s), m in results.measures.items():
        if s != "nbqup" or m.median is None:
            continue
        if w.startswith("reopen"):
            out.append(
                Ratio(
                    f"{w} (s)",
                    m.median,
                    "< 0.5",
                    m.median < 0.5,
                    "JobQueue(path) until the first resumed job runs",
                )
            )
        elif w.startswith("jobs_df"):
            out.append(
                Ratio(
                    f"{w} (s)", m.median, "< 1", m.median < 1, "jq.jobs_df() over the whole history"
                )
            )
        elif w.startswith("idle RSS") and "empty" not in w:
            out.append(
                Ratio(
                    f"{w} (MB)",
                    m.median,
                    "< 200",
                    m.median < 200,
                    "resident memory, fresh process, queue open and idle",
                )
            )
    for (w, _), m in results.measures.items():
        if w.startswith("jobs_df") and m.median is None and m.note.startswith("skipped"):
            out.append(Ratio(f"{w} (s)", None, "< 1", None, m.note))
    return out


# --------------------------------------------------------------------------- output


def _fmt(x: float | None) -> str:
    if x is None:
        return "-"
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    if x >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def format_measures(results: Results) -> str:
    lines = [
        "| workload | system | median | min-max | unit | runs | note |",
        "| --- | --- | ---: | ---: | --- | ---: | --- |",
    ]
    workloads = list(dict.fromkeys(w for w, _ in results.measures))
    systems = list(dict.fromkeys(s for _, s in results.measures))
    ordered = sorted(
        results.measures.values(),
        key=lambda m: (workloads.index(m.workload), systems.index(m.system)),
    )
    for m in ordered:
        span = f"{_fmt(min(m.values))}-{_fmt(max(m.values))}" if m.values else "-"
        note = m.note + (f" ERROR: {m.errors[0]}" if m.errors else "")
        lines.append(
            f"| {m.workload} | {m.system} | {_fmt(m.median)} | {span} | {m.unit} "
            f"| {len(m.values)} | {note} |"
        )
    return "\n".join(lines)


def format_ratios(ratios: list[Ratio]) -> str:
    lines = ["| figure | value | target | verdict |", "| --- | ---: | ---: | --- |"]
    for r in ratios:
        verdict = "" if r.target == "(info)" else r.verdict
        lines.append(f"| {r.name} | {_fmt(r.value)} | {r.target} | {verdict} |")
    return "\n".join(lines)


# -------------------------------------------------------------------------- machine


def machine_info(workdir: Path) -> dict[str, Any]:
    cpu = platform.processor() or "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {}
    for dist in (
        "nbqup",
        "huey",
        "persist-queue",
        "lmdb",
        "zict",
        "cloudpickle",
        "pandas",
        "distributed",
    ):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "filesystem": _filesystem(workdir),
        "loadavg": os.getloadavg(),
        "versions": versions,
        "git": _git_state(),
    }


def _git_state() -> str:
    """The commit measured, and whether nbqup/ had uncommitted changes."""
    import subprocess

    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "nbqup"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"
    return head + (" + uncommitted changes in nbqup/" if dirty else "")


def _filesystem(path: Path) -> str:
    best = ("", "?")
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and str(path).startswith(parts[1]) and len(parts[1]) > len(best[0]):
                best = (parts[1], f"{parts[0]} ({parts[2]}) on {parts[1]}")
    return best[1]


def _machine_line(m: dict[str, Any]) -> str:
    v = ", ".join(f"{k} {val}" for k, val in m["versions"].items())
    load = ", ".join(f"{x:.2f}" for x in m["loadavg"])
    return (
        f"{m['date']}  {m['nproc']} CPUs ({m['cpu']}), Python {m['python']}, "
        f"disk {m['filesystem']}, load average {load}\ngit {m['git']}; {v}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
