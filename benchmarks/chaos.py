"""The crash-chaos run: SIGKILL a process running jobs, again and again, and count.

    python -m benchmarks.chaos                      # 500 jobs, 20 kills, nbqup then Huey
    python -m benchmarks.chaos --kills 3 --jobs 30 --seed 7 --systems nbqup

A child process opens the queue, submits whatever part of the workload it has not yet
seen acknowledged (like a notebook re-run top to bottom after a restart) and waits for
the jobs.  The parent SIGKILLs it at a random moment after it reports ready, ``--kills``
times in a row, restarting it each time; then lets one last child finish.  The workload
mixes quick jobs, slow ones, jobs that fail their first attempts and succeed on a retry,
checkpointing jobs (a resumed attempt carries on from its last checkpoint) and jobs that
always fail.  At the end every job is accounted for:

- *lost*: a job whose submit returned (it is in the child's journal) but that is missing
  from the store or never finished;
- *wrong*: finished, but not as its kind dictates (status, result, error);
- *re-runs*: attempts beyond the ones the job needs on its own (runs cut short by a kill);
- *corrupt*: records the store set aside when reopened (``jq.corrupt``).

The same harness runs Huey's ``SqliteHuey`` with the in-process thread consumer used by
the benchmarks: a task that was running when the process died is gone (Huey has already
taken it off its queue), which is what its *lost* counts.  Huey has no checkpoints, so its
checkpointing jobs simply start over.  A run is reproducible with ``--seed``; exit status
is 1 if nbqup lost a job, finished one wrongly or found a corrupt record.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SYSTEMS = ("nbqup", "huey")
FLAKY_RETRIES = 3
DOOMED_RETRIES = 1

# ------------------------------------------------------------------------------ workload


@dataclass(frozen=True)
class Spec:
    i: int
    kind: str  # quick | slow | flaky | checkpoint | doomed
    pause: float = 0.0
    steps: int = 0
    fail_first: int = 0

    @property
    def args(self) -> tuple[Any, ...]:
        if self.kind == "slow":
            return (self.i, self.pause)
        if self.kind == "flaky":
            return (self.i, self.fail_first)
        if self.kind == "checkpoint":
            return (self.i, self.steps, self.pause)
        return (self.i,)

    @property
    def expected_attempts(self) -> int:
        if self.kind == "flaky":
            return self.fail_first + 1
        if self.kind == "doomed":
            return DOOMED_RETRIES + 1
        return 1

    def expected(self) -> tuple[str, Any]:
        """``(status, result)``; for a failed job the result is a text in its error."""
        if self.kind == "quick":
            return "succeeded", self.i * 2
        if self.kind == "slow":
            return "succeeded", self.i * 3
        if self.kind == "flaky":
            return "succeeded", self.i + 1000
        if self.kind == "checkpoint":
            return "succeeded", (self.i + 1) * self.steps * (self.steps + 1) // 2
        return "failed", f"doomed {self.i}"


def make_specs(n: int, seed: int) -> list[Spec]:
    rng = random.Random(seed)
    kinds = ["quick"] * 40 + ["slow"] * 20 + ["flaky"] * 20 + ["checkpoint"] * 15 + ["doomed"] * 5
    out = []
    for i in range(n):
        kind = rng.choice(kinds)
        if kind == "slow":
            out.append(Spec(i, kind, pause=round(rng.uniform(0.05, 0.3), 3)))
        elif kind == "flaky":
            out.append(Spec(i, kind, fail_first=rng.randint(1, 2)))
        elif kind == "checkpoint":
            out.append(
                Spec(i, kind, steps=rng.randint(4, 8), pause=round(rng.uniform(0.03, 0.08), 3))
            )
        else:
            out.append(Spec(i, kind))
    return out


# -- the jobs (importable, so both queues find them by name) -----------------------------


def quick_job(i: int) -> int:
    return i * 2


def slow_job(i: int, pause: float) -> int:
    time.sleep(pause)
    return i * 3


def flaky_job(i: int, fail_first: int) -> int:
    import nbqup

    job = nbqup.current_job()
    assert job is not None
    if job.attempts <= fail_first:
        raise RuntimeError(f"flaky {i} fails attempt {job.attempts}")
    return i + 1000


def checkpoint_job(i: int, steps: int, pause: float) -> list[int]:
    """Returns ``[total, step it resumed from]``; the total does not depend on resuming."""
    import nbqup

    state = nbqup.restore(default=None) or {"step": 0, "acc": 0}
    start, acc = state["step"], state["acc"]
    for s in range(start, steps):
        time.sleep(pause)
        acc += (s + 1) * (i + 1)
        nbqup.checkpoint({"step": s + 1, "acc": acc})
    return [acc, start]


def doomed_job(i: int) -> None:
    raise ValueError(f"doomed {i}")


def _huey_flaky(i: int, fail_first: int, task: Any = None) -> int:
    attempt = FLAKY_RETRIES - task.retries + 1
    if attempt <= fail_first:
        raise RuntimeError(f"flaky {i} fails attempt {attempt}")
    return i + 1000


def _huey_checkpoint(i: int, steps: int, pause: float) -> list[int]:
    acc = 0
    for s in range(steps):
        time.sleep(pause)
        acc += (s + 1) * (i + 1)
    return [acc, 0]


NBQUP_JOBS = {
    "quick": quick_job,
    "slow": slow_job,
    "flaky": flaky_job,
    "checkpoint": checkpoint_job,
    "doomed": doomed_job,
}


# --------------------------------------------------------------------------- journal


def _journal_path(folder: Path) -> Path:
    return folder / "journal.txt"


def read_journal(folder: Path) -> dict[int, str]:
    """Index -> id of every job whose submit returned (the last one if resubmitted)."""
    out: dict[int, str] = {}
    path = _journal_path(folder)
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit():  # a torn last line is skipped
            out[int(parts[0])] = parts[1]
    return out


class _Journal:
    def __init__(self, folder: Path) -> None:
        self.fd = os.open(_journal_path(folder), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def add(self, i: int, job_id: str) -> None:
        os.write(self.fd, f"{i} {job_id}\n".encode())  # one write: all or nothing on a kill


# ------------------------------------------------------------------------------ children


def child_nbqup(folder: Path, specs: list[Spec]) -> None:
    import nbqup

    jq = nbqup.JobQueue(folder / "store", workers=4)
    print("ready", flush=True)
    seen = read_journal(folder)
    journal = _Journal(folder)
    for spec in specs:
        if spec.i in seen:
            continue
        retries = {"flaky": FLAKY_RETRIES, "doomed": DOOMED_RETRIES}.get(spec.kind, 0)
        job = jq.options(
            key=f"chaos-{spec.i}", name=f"{spec.kind}-{spec.i}", retries=retries, max_crashes=None
        ).submit(NBQUP_JOBS[spec.kind], *spec.args)
        journal.add(spec.i, job.id)
    jq.wait()
    jq.close()
    print("finished", flush=True)


def _huey(folder: Path) -> Any:
    from huey import SqliteHuey

    return SqliteHuey("chaos", filename=str(folder / "huey.db"), store_none=True)


def _huey_tasks(huey: Any) -> dict[str, Any]:
    return {
        "quick": huey.task()(quick_job),
        "slow": huey.task()(slow_job),
        "flaky": huey.task(retries=FLAKY_RETRIES, context=True)(_huey_flaky),
        "checkpoint": huey.task()(_huey_checkpoint),
        "doomed": huey.task(retries=DOOMED_RETRIES)(doomed_job),
    }


def child_huey(folder: Path, specs: list[Spec]) -> None:
    import logging

    from benchmarks.systems import HUEY_POLLING, _huey_consumer_class

    logging.getLogger("huey").setLevel(logging.CRITICAL)
    huey = _huey(folder)
    tasks = _huey_tasks(huey)
    consumer = _huey_consumer_class()(
        huey,
        workers=4,
        worker_type="thread",
        periodic=False,
        check_worker_health=False,
        **HUEY_POLLING["ms"][0],
    )
    consumer.start()
    print("ready", flush=True)
    seen = read_journal(folder)
    journal = _Journal(folder)
    for spec in specs:
        if spec.i not in seen:
            seen[spec.i] = tasks[spec.kind](*spec.args).id
            journal.add(spec.i, seen[spec.i])
    # Wait for every result; tasks lost by an earlier kill never get one, so stop once
    # nothing is queued or scheduled and no result has appeared for a while.
    missing, last_change = set(seen.values()), time.monotonic()
    while missing:
        now_missing = {t for t in missing if not huey.storage.has_data_for_key(t)}
        if now_missing != missing:
            missing, last_change = now_missing, time.monotonic()
        idle = huey.pending_count() == 0 and huey.scheduled_count() == 0
        if idle and time.monotonic() - last_change > 3.0:
            break
        time.sleep(0.05)
    consumer.stop(graceful=True)
    print("finished", flush=True)


# ------------------------------------------------------------------------------- parent


@dataclass
class Report:
    system: str
    jobs: int
    kills_requested: int
    kills_delivered: int = 0
    finished_before_kill: int = 0
    acknowledged: int = 0
    lost: int = 0
    wrong: int = 0
    corrupt: int = 0
    duplicates: int = 0
    reruns: int = 0
    checkpoint_resumes: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        parts = [
            f"{self.system}: {self.jobs} jobs, {self.kills_delivered} of "
            f"{self.kills_requested} kills landed",
            f"lost {self.lost}",
            f"wrong {self.wrong}",
            f"corrupt {self.corrupt}",
            f"duplicates {self.duplicates}",
            f"re-runs {self.reruns}",
        ]
        if self.system == "nbqup":
            parts.append(f"resumed from a checkpoint {self.checkpoint_resumes}")
        parts.append(f"{self.seconds:.1f} s")
        return ", ".join(parts)


def _spawn(system: str, folder: Path, args: argparse.Namespace) -> subprocess.Popen[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    log = open(folder / "child.log", "a")  # noqa: SIM115 - handed to the child
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.chaos",
        "--child",
        system,
        "--dir",
        str(folder),
        "--jobs",
        str(args.jobs),
        "--seed",
        str(args.seed),
    ]
    try:
        return subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=env, cwd=ROOT
        )
    finally:
        log.close()


def _wait_ready(proc: subprocess.Popen[str], timeout: float = 60.0) -> bool:
    """True once the child printed ``ready``; False if it exited first."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.1)
        if ready:
            line = proc.stdout.readline()
            if not line:
                return False
            if line.strip() == "ready":
                return True
        elif proc.poll() is not None:
            return False
    raise TimeoutError("the child did not get ready within a minute")


def run_system(system: str, args: argparse.Namespace, workdir: Path) -> Report:
    folder = workdir / system
    folder.mkdir()
    rng = random.Random(args.seed)
    delays = [rng.uniform(0.0, 0.05)] + [
        rng.uniform(0.0, args.max_delay) for _ in range(args.kills - 1)
    ]
    report = Report(system, args.jobs, args.kills)
    t0 = time.monotonic()
    for n, delay in enumerate(delays[: args.kills]):
        proc = _spawn(system, folder, args)
        if _wait_ready(proc):
            time.sleep(delay)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            report.kills_delivered += 1
        else:
            report.finished_before_kill += 1
            if proc.returncode != 0:
                report.problems.append(f"child {n} exited {proc.returncode} (see child.log)")
        proc.wait()
        if proc.stdout:
            proc.stdout.close()
        print(f"  {system}: kill {n + 1}/{args.kills} after {delay:.3f} s", flush=True)
    proc = _spawn(system, folder, args)
    try:
        code = proc.wait(timeout=args.final_timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        code = proc.wait()
        report.problems.append(f"the final run did not finish in {args.final_timeout} s")
    if proc.stdout:
        proc.stdout.close()
    if code != 0:
        report.problems.append(f"the final run exited {code}: {_tail(folder / 'child.log')}")
    specs = make_specs(args.jobs, args.seed)
    if system == "nbqup":
        check_nbqup(folder, specs, report)
    else:
        check_huey(folder, specs, report)
    report.seconds = time.monotonic() - t0
    return report


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text().strip().splitlines()[-lines:])
    except OSError:
        return ""


def check_nbqup(folder: Path, specs: list[Spec], report: Report) -> None:
    import nbqup

    journal = read_journal(folder)
    report.acknowledged = len(journal)
    jq = nbqup.JobQueue(folder / "store", workers=0)
    try:
        report.corrupt = len(jq.corrupt)
        report.problems.extend(f"corrupt record {k}: {why}" for k, why in jq.corrupt)
        report.duplicates = max(0, len(jq.jobs()) - len(specs))
        for spec in specs:
            job_id = journal.get(spec.i)
            report.by_kind[spec.kind] = report.by_kind.get(spec.kind, 0) + 1
            if job_id is None:
                report.lost += 1
                report.problems.append(f"job {spec.i} ({spec.kind}) was never acknowledged")
                continue
            try:
                job = jq.get(job_id)
                status = str(job.status)
            except KeyError:
                report.lost += 1
                report.problems.append(f"job {spec.i} ({spec.kind}) {job_id} is missing")
                continue
            if not job.done():
                report.lost += 1
                report.problems.append(f"job {spec.i} ({spec.kind}) {job_id} is {status}")
                continue
            want_status, want = spec.expected()
            got: Any = None
            if status == "succeeded":
                got = job.result(timeout=0)
                if spec.kind == "checkpoint":
                    got, start = got
                    report.checkpoint_resumes += start > 0
            ok = status == want_status and (
                got == want if want_status == "succeeded" else want in (job.error or "")
            )
            if not ok:
                report.wrong += 1
                report.problems.append(
                    f"job {spec.i} ({spec.kind}) {status} {got!r}, expected {want_status} {want!r}"
                )
            report.reruns += max(0, job.attempts - spec.expected_attempts)
    finally:
        jq.close()


def check_huey(folder: Path, specs: list[Spec], report: Report) -> None:
    from huey.constants import EmptyData
    from huey.utils import Error

    journal = read_journal(folder)
    report.acknowledged = len(journal)
    huey = _huey(folder)
    _huey_tasks(huey)
    lost_kinds: Counter[str] = Counter()
    for spec in specs:
        report.by_kind[spec.kind] = report.by_kind.get(spec.kind, 0) + 1
        task_id = journal.get(spec.i)
        raw = EmptyData if task_id is None else huey.storage.peek_data(task_id)
        if raw is EmptyData:
            report.lost += 1
            lost_kinds[spec.kind] += 1
            continue
        value = huey.serializer.deserialize(raw)
        want_status, want = spec.expected()
        if isinstance(value, Error) and value.metadata.get("retries"):
            # Huey stores an attempt's error before requeueing it for a retry: this one's
            # retry never finished (it was running when the process was killed).
            report.lost += 1
            lost_kinds[spec.kind] += 1
            continue
        if isinstance(value, Error):
            ok = want_status == "failed" and want in str(value.metadata.get("error", ""))
        else:
            got = value[0] if spec.kind == "checkpoint" else value
            ok = want_status == "succeeded" and got == want
        if not ok:
            report.wrong += 1
            report.problems.append(f"task {spec.i} ({spec.kind}) gave {value!r:.200}")
    if lost_kinds:
        report.problems.append(f"lost by kind: {dict(lost_kinds)}")
    huey.storage.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.chaos",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--kills", type=int, default=20, help="SIGKILLs in a row (20)")
    p.add_argument("--jobs", type=int, default=500, help="jobs in the workload (500)")
    p.add_argument("--seed", type=int, default=1, help="seed of the workload and kill times")
    p.add_argument(
        "--max-delay",
        type=float,
        default=1.0,
        help="longest wait between a child's start and its kill (1.0 s)",
    )
    p.add_argument("--systems", default="nbqup,huey", help="nbqup, huey or both (default)")
    p.add_argument("--final-timeout", type=float, default=300.0, help=argparse.SUPPRESS)
    p.add_argument("--json", dest="json_path", help="write the reports here as JSON")
    p.add_argument("--tmpdir", help="where the stores are made (default: the repository's disk)")
    p.add_argument("--keep", action="store_true", help="keep the stores and logs")
    p.add_argument(
        "--faults",
        default="disk,locks,damage",
        help="fault scenarios run after the kills (benchmarks.faults), or 'none'",
    )
    p.add_argument("--damages", type=int, default=40, help="damaged copies to open (40)")
    p.add_argument("--lock-rounds", type=int, default=3, help="rounds of deleted locks (3)")
    p.add_argument("--disk-jobs", type=int, default=400, help="jobs of 30 KB on an 8 MB tmpfs")
    p.add_argument("--child", choices=SYSTEMS, help=argparse.SUPPRESS)
    p.add_argument("--dir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        specs = make_specs(args.jobs, args.seed)
        (child_nbqup if args.child == "nbqup" else child_huey)(Path(args.dir), specs)
        return 0
    systems = [s for s in args.systems.split(",") if s]
    if not systems or set(systems) - set(SYSTEMS) or args.kills < 1 or args.jobs < 1:
        p.error("--systems takes nbqup and/or huey; --kills and --jobs must be >= 1")
    workdir = Path(tempfile.mkdtemp(prefix=".chaos-", dir=args.tmpdir or ROOT))
    kinds = Counter(s.kind for s in make_specs(args.jobs, args.seed))
    print(f"chaos: {args.jobs} jobs ({dict(kinds)}), {args.kills} kills, seed {args.seed}")
    reports = []
    try:
        for system in systems:
            reports.append(run_system(system, args, workdir))
            print(reports[-1].summary(), flush=True)
            for problem in reports[-1].problems[:10]:
                print(f"    {problem:.300}")
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    faults = _run_faults(args)
    print()
    for r in reports:
        print(r.summary())
    for f in faults:
        print(f.summary())
    if args.json_path:
        doc = {
            "args": vars(args),
            "reports": [asdict(r) for r in reports],
            "faults": [asdict(f) for f in faults],
        }
        Path(args.json_path).write_text(json.dumps(doc, indent=1) + "\n")
    bad = [r for r in reports if r.system == "nbqup" and (r.lost or r.wrong or r.corrupt)]
    bad += [r for r in reports if any("exited" in p or "final run" in p for p in r.problems)]
    return 1 if bad or not all(f.clean for f in faults) else 0


def _run_faults(args: argparse.Namespace) -> list[Any]:
    """The fault scenarios of :mod:`benchmarks.faults`, on stores of at most 150 jobs."""
    if args.faults in ("", "none"):
        return []
    from benchmarks import faults

    print(f"faults: {args.faults}", flush=True)
    opts = argparse.Namespace(
        scenarios=args.faults,
        damages=args.damages,
        lock_rounds=args.lock_rounds,
        disk_jobs=args.disk_jobs,
        jobs=min(args.jobs, 150),
        seed=args.seed,
        tmpdir=args.tmpdir,
        keep=args.keep,
    )
    return faults.run(opts)


if __name__ == "__main__":
    raise SystemExit(main())
