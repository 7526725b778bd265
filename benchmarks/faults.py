"""The fault run: a full disk, lock files deleted under live processes, damaged pages.

    python -m benchmarks.faults                        # every scenario
    python -m benchmarks.faults --scenarios damage --damages 40 --seed 3

The SIGKILL chaos run (:mod:`benchmarks.chaos`) kills processes; this one breaks what they
stand on, the way a full disk, a temp-file cleaner or a failing sector does, and counts
what a user would mind:

- *deaths*: a process killed by a signal it did not ask for (SIGBUS on a full disk,
  SIGABRT from an LMDB assertion, SIGSEGV);
- *hangs*: a process that did not finish within its time (a child is given minutes
  for seconds of work);
- *lost*: a job whose submit returned but that is missing or never finished, while the
  store opened without an error;
- *run twice*: a job whose function ran more than once though no process was killed
  (every run appends the job's index to an execution log kept off the faulty disk);
- *raw errors*: a reader that failed with an exception that is not nbqup's own (a bare
  ``lmdb.CorruptedError`` names neither the store nor what to do);
- *silent losses*: a damaged store that opened without an error but answered a job
  wrongly or not at all.  A store refused with ``StoreCorrupt`` is not silent: the user
  is told, and ``nbqup salvage`` copies out what still reads (the run counts it).

Scenarios:

``disk``   the store lives on a small tmpfs (needs root to mount one; skipped otherwise);
           a child submits jobs with 30 KB arguments until the disk is full, keeps
           retrying the refused submit, the run grows the tmpfs (the user frees space),
           and the child must finish every job once.
``locks``  a child owns a store and runs jobs; the run deletes the store's lock files
           (``owner.lock``, ``owner.json``, ``lmdb/lock.mdb``) and starts a second process
           with workers on the same store, then deletes ``lock.mdb`` again while both run.
``damage`` :mod:`benchmarks.damage` on the store of a short chaos run (3 SIGKILLs):
           ``--damages`` copies, each with one live page damaged, opened by a child
           that reads everything, then salvaged and run to the end.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ("disk", "locks", "damage")
PAD = 30_000  # bytes of argument per job in the disk scenario


# ------------------------------------------------------------------------------ the job


def logged_job(i: int, pause: float, log: str, pad: bytes = b"") -> int:
    """Append ``i`` to the execution log (one write: whole or not at all), then work."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, f"{i}\n".encode())
    finally:
        os.close(fd)
    time.sleep(pause)
    return i * 2 + len(pad) % 7


def expected(i: int, pad: int) -> int:
    return i * 2 + pad % 7


def executions(log: Path) -> Counter[int]:
    if not log.exists():
        return Counter()
    return Counter(int(line) for line in log.read_text().split() if line.isdigit())


# ------------------------------------------------------------------------------ children


def child_run(args: argparse.Namespace) -> int:
    """Submit jobs ``offset..offset+jobs`` not yet in the journal, then wait for them.

    A refused submit (a full disk) prints ``full`` once and is tried again until it goes
    through; the parent frees space when it reads ``full``.
    """
    import nbqup
    from benchmarks.chaos import _Journal, read_journal

    folder = Path(args.dir)
    rng = random.Random(args.seed * 7919 + args.offset)
    jq = nbqup.JobQueue(args.store, workers=args.workers)
    print("ready", flush=True)
    seen = read_journal(folder)
    journal = _Journal(folder)
    said_full = False
    log = str(folder / "executions.txt")
    for i in range(args.offset, args.offset + args.jobs):
        if i in seen:
            continue
        pad = os.urandom(args.pad) if args.pad else b""
        pause = round(rng.uniform(0.0, args.max_pause), 4)
        deadline = time.monotonic() + 120
        while True:
            try:
                job = jq.options(key=f"fault-{i}").submit(logged_job, i, pause, log, pad)
                break
            except nbqup.NbqupError as exc:
                if not said_full:
                    print(f"full {exc}".replace("\n", " "), flush=True)
                    said_full = True
                if time.monotonic() > deadline:
                    print("gave up submitting", flush=True)
                    return 3
                time.sleep(0.05)
        journal.add(i, job.id)
    done = jq.wait(timeout=args.wait)
    jq.close()
    print("finished" if done else "timeout", flush=True)
    return 0 if done else 4


# ------------------------------------------------------------------------------- parent


@dataclass
class FaultReport:
    scenario: str
    rounds: int = 0
    deaths: int = 0
    hangs: int = 0
    lost: int = 0
    run_twice: int = 0
    silent_losses: int = 0
    raw_errors: int = 0  # a reader failed with an exception that is not nbqup's own
    refused: int = 0  # damaged stores refused with a clear StoreCorrupt
    salvaged_jobs: int = 0
    salvage_lost_jobs: int = 0
    skipped: str = ""
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def clean(self) -> bool:
        bad = self.deaths, self.hangs, self.lost, self.run_twice, self.silent_losses
        return not (any(bad) or self.raw_errors)

    def summary(self) -> str:
        if self.skipped:
            return f"{self.scenario}: skipped ({self.skipped})"
        text = (
            f"{self.scenario}: {self.rounds} rounds, deaths {self.deaths}, hangs {self.hangs}, "
            f"lost {self.lost}, run twice {self.run_twice}, silent losses {self.silent_losses}"
        )
        if self.scenario == "damage":
            text += (
                f", raw errors {self.raw_errors}, refused with StoreCorrupt {self.refused}"
                f" (salvage kept {self.salvaged_jobs} jobs, reported {self.salvage_lost_jobs} lost)"
            )
        return text + f", {self.seconds:.1f} s"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def _spawn_run(
    folder: Path, store: Path, args: argparse.Namespace, **over: Any
) -> subprocess.Popen[str]:
    opts = {"offset": 0, "jobs": args.jobs, "pad": 0, "workers": 2, "max_pause": 0.02}
    opts.update(over)
    cmd = [sys.executable, "-m", "benchmarks.faults", "--child", "--dir", str(folder)]
    cmd += ["--store", str(store), "--seed", str(args.seed), "--wait", "150"]
    for name, value in opts.items():
        cmd += [f"--{name.replace('_', '-')}", str(value)]
    log = open(folder / "child.log", "a")  # noqa: SIM115 - handed to the child
    try:
        return subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=_env(), cwd=ROOT
        )
    finally:
        log.close()


def _read_line(proc: subprocess.Popen[str], timeout: float) -> str | None:
    """The child's next line of output, None at its end or after ``timeout``."""
    import select

    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        return None
    line = proc.stdout.readline()
    return line.strip() if line else None


def _finish(proc: subprocess.Popen[str], report: FaultReport, what: str, timeout: float) -> None:
    """Wait for a child; count a death by signal or a hang."""
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        report.hangs += 1
        report.problems.append(f"{what} hung (killed after {timeout:.0f} s)")
        return
    finally:
        if proc.stdout:
            proc.stdout.close()
    if code < 0:
        report.deaths += 1
        report.problems.append(f"{what} died by signal {-code}")
    elif code != 0:
        report.problems.append(f"{what} exited {code}")


def _account(folder: Path, store: Path, n: int, report: FaultReport, pad: int = 0) -> None:
    """Every journaled job succeeded with its result, and ran once."""
    import nbqup
    from benchmarks.chaos import read_journal

    journal = read_journal(folder)
    runs = executions(folder / "executions.txt")
    report.run_twice += sum(1 for count in runs.values() if count > 1)
    jq = nbqup.JobQueue(store, workers=0)
    try:
        if jq.corrupt:
            report.problems.append(f"corrupt records: {jq.corrupt[:3]}")
        for i in range(n):
            job_id = journal.get(i)
            if job_id is None:
                report.lost += 1
                report.problems.append(f"job {i} was never acknowledged")
                continue
            try:
                got = jq.get(job_id).result(timeout=0)
            except (KeyError, TimeoutError, nbqup.NbqupError) as exc:
                report.lost += 1
                report.problems.append(f"job {i} {job_id}: {type(exc).__name__} {exc}"[:200])
                continue
            if got != expected(i, pad):
                report.lost += 1
                report.problems.append(f"job {i} gave {got!r}")
    finally:
        jq.close()


def run_disk(args: argparse.Namespace, workdir: Path) -> FaultReport:
    report = FaultReport("disk")
    if os.geteuid() != 0:
        report.skipped = "mounting a tmpfs needs root"
        return report
    folder = workdir / "disk"
    mount = folder / "tmpfs"
    mount.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], check=True)
    try:
        store = mount / "store"
        report.rounds = 1
        proc = _spawn_run(folder, store, args, jobs=args.disk_jobs, pad=PAD)
        grown = False
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = _read_line(proc, 1.0)
            if line is None and proc.poll() is not None:
                break
            if line and line.startswith("full") and not grown:
                report.problems.append(f"the child heard: {line[5:200]}")
                # the user frees space: the tmpfs grows under the running process
                subprocess.run(["mount", "-o", "remount,size=64m", str(mount)], check=True)
                grown = True
            if line in ("finished", "timeout"):
                break
        left = max(5.0, deadline - time.monotonic())
        _finish(proc, report, "the child on a full disk", timeout=left)
        if not grown and not report.deaths:
            report.problems.append("the disk never filled: nothing was tested")
        _account(folder, store, args.disk_jobs, report, pad=PAD)
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
    return report


def _delete_locks(store: Path) -> list[str]:
    gone = []
    for rel in ("owner.lock", "owner.json", "lmdb/lock.mdb"):
        try:
            (store / rel).unlink()
            gone.append(rel)
        except FileNotFoundError:
            pass
    return gone


def run_locks(args: argparse.Namespace, workdir: Path) -> FaultReport:
    report = FaultReport("locks")
    rng = random.Random(args.seed)
    for r in range(args.lock_rounds):
        folder = workdir / f"locks-{r}"
        folder.mkdir(parents=True)
        store = folder / "store"
        first = _spawn_run(folder, store, args, jobs=args.jobs, max_pause=0.03)
        if _read_line(first, 60) != "ready":
            report.problems.append(f"round {r}: the first process did not start")
        time.sleep(rng.uniform(0.05, 0.4))
        _delete_locks(store)
        second = _spawn_run(folder, store, args, offset=args.jobs, jobs=args.jobs // 2)
        for _ in range(3):  # and again while both run
            time.sleep(rng.uniform(0.05, 0.3))
            (store / "lmdb" / "lock.mdb").unlink(missing_ok=True)
        _finish(first, report, f"round {r}: the first process", timeout=180)
        _finish(second, report, f"round {r}: the second process", timeout=180)
        _account(folder, store, args.jobs + args.jobs // 2, report)
        report.rounds += 1
    return report


def run_damage(args: argparse.Namespace, workdir: Path) -> FaultReport:
    """:mod:`benchmarks.damage` on a store written by a short chaos run, as a report."""
    from benchmarks import damage

    report = FaultReport("damage")
    out = workdir / "damage.json"
    chaos = f"--jobs {args.jobs} --kills 3 --seed {args.seed}"
    argv = ["--copies", str(args.damages), "--seed", str(args.seed), "--chaos", chaos]
    damage.main([*argv, "--tmpdir", str(workdir), "--json", str(out)])
    if not out.exists():
        report.problems.append("the damage run wrote no results (its chaos run failed)")
        report.raw_errors += 1
        return report
    doc = json.loads(out.read_text())
    for row in doc["rows"]:
        report.rounds += 1
        ends = [row["open"], row["salvage"], row.get("ran", "")]
        report.deaths += sum(e.startswith("died") for e in ends)
        report.hangs += sum(e in ("hung", "timed out") for e in ends)
        report.raw_errors += row["open"] not in ("worked", "refused")
        report.refused += row["open"] == "refused"
        report.silent_losses += int(row.get("silent", 0))
        report.salvaged_jobs += int(row.get("kept", 0))
        report.salvage_lost_jobs += int(row.get("named", 0)) + int(row.get("counted", 0))
        if row["open"] not in ("worked", "refused") or row.get("silent"):
            report.problems.append(f"{row['damage']}: {row}")
    return report


RUNNERS = {"disk": run_disk, "locks": run_locks, "damage": run_damage}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help="disk, locks, damage")
    p.add_argument("--damages", type=int, default=40, help="damaged copies to open (40)")
    p.add_argument("--lock-rounds", type=int, default=3, help="rounds of deleted locks (3)")
    p.add_argument("--disk-jobs", type=int, default=400, help="jobs of 30 KB on an 8 MB tmpfs")


def run(args: argparse.Namespace) -> list[FaultReport]:
    names = [s for s in args.scenarios.split(",") if s]
    if set(names) - set(SCENARIOS):
        raise SystemExit(f"--scenarios takes {', '.join(SCENARIOS)}")
    workdir = Path(tempfile.mkdtemp(prefix=".faults-", dir=args.tmpdir or ROOT))
    reports = []
    try:
        for name in names:
            t0 = time.monotonic()
            report = RUNNERS[name](args, workdir)
            report.seconds = time.monotonic() - t0
            reports.append(report)
            print(report.summary(), flush=True)
            for problem in report.problems[:8]:
                print(f"    {problem:.300}")
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return reports


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.faults",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p)
    p.add_argument("--jobs", type=int, default=150, help="jobs per store (150)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", dest="json_path", help="write the reports here as JSON")
    p.add_argument("--tmpdir", help="where the stores are made (default: the repository's disk)")
    p.add_argument("--keep", action="store_true", help="keep the stores and logs")
    child = p.add_argument_group("child (internal)")
    child.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    for name, kind in [("dir", str), ("store", str), ("offset", int), ("pad", int)]:
        child.add_argument(f"--{name}", type=kind, help=argparse.SUPPRESS)
    child.add_argument("--workers", type=int, default=2, help=argparse.SUPPRESS)
    child.add_argument("--max-pause", type=float, default=0.02, help=argparse.SUPPRESS)
    child.add_argument("--wait", type=float, default=150, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child_run(args)
    reports = run(args)
    if args.json_path:
        doc = {"args": vars(args), "reports": [asdict(r) for r in reports]}
        Path(args.json_path).write_text(json.dumps(doc, indent=1) + "\n")
    return 0 if all(r.clean for r in reports) else 1


if __name__ == "__main__":
    raise SystemExit(main())
