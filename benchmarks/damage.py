"""Damaged pages, after the crash-chaos run: open each damaged copy, salvage it, count.

    python -m benchmarks.damage                    # chaos (500 jobs, 20 kills), 40 damages
    python -m benchmarks.damage --copies 5 --chaos "--jobs 40 --kills 2"

First :mod:`benchmarks.chaos` runs its workload (nbqup only) and keeps the store it
SIGKILLed again and again; every job it acknowledged is in its journal.  Then, ``--copies``
times, a copy of that store gets one live page damaged -- a random bit of its page number,
flags or bounds, a node offset, or a node's sizes or flags -- and:

- a child process opens the copy and reads everything (``jobs_df``, ``counts``, every
  job's status, result and logs) and submits a job: it must either work or raise
  ``StoreCorrupt``; it must never die by a signal, hang, or raise anything else;
- ``nbqup salvage`` (another child) copies what still reads into a fresh store, which a
  child opens with workers and runs to the end;
- every acknowledged job is accounted for: in the salvaged store, or named by the salvage
  report (lost or set aside), or among the records it counts on damaged pages.  A job in
  none of them is lost *silently*.

Exit status 1 if a child died, hung or raised a raw error, or a job was lost silently.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from benchmarks.chaos import read_journal

ROOT = Path(__file__).resolve().parent.parent
PSIZE = 4096
OPEN = """
import sys, nbqup
from nbqup.errors import JobFailed, StoreCorrupt
try:
    with nbqup.JobQueue(sys.argv[1], workers=0) as jq:
        jq.jobs_df(); jq.counts()
        for job in jq.jobs():
            job.status, job.logs
            if job.status in ("succeeded", "failed"):
                try:
                    job.result(timeout=0)
                except JobFailed:
                    pass
        jq.submit(pow, 2, 2)
    print("worked")
except StoreCorrupt as exc:
    print("refused" if "nbqup salvage" in str(exc) else f"bad message: {exc}")
except Exception as exc:
    print(f"raw {type(exc).__name__}: {exc}")
"""
RUN = """
import sys, nbqup
with nbqup.JobQueue(sys.argv[1], workers=4) as jq:
    print("ran" if jq.wait(300) else "timed out")
"""


def _child(args: list[str], timeout: float) -> str:
    """A child's last line of output, or how it ended if it printed none."""
    try:
        proc = subprocess.run(
            [sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT
        )
    except subprocess.TimeoutExpired:
        return "hung"
    if proc.returncode < 0:
        return f"died by signal {-proc.returncode}"
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 and not lines:
        return f"exited {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}"
    return lines[-1] if lines else "printed nothing"


def _damage(store: Path, rng: random.Random) -> str:
    """Damage one live page of ``store``'s data file; says which and how."""
    from nbqup import lmdbcheck, lmdbfile

    data = store / "lmdb" / "data.mdb"
    kinds: dict[int, str] = {}
    with lmdbfile.DataFile(data) as f:
        lmdbcheck.check(f, lmdbfile.check_meta(f), kinds=kinds)
    pgno = rng.choice(sorted(kinds))
    with open(data, "r+b") as fh:
        fh.seek(pgno * PSIZE)
        page = bytearray(fh.read(PSIZE))
        how = rng.choice(["header bit", "node offset", "node sizes", "node flags"])
        if kinds[pgno].endswith("overflow"):
            how = "header bit"
        if how == "header bit":
            at = rng.choice([*range(8), *range(10, 16)])
            page[at] ^= 1 << rng.randrange(8)
        else:
            n = (struct.unpack_from("<H", page, 12)[0] - 16) // 2
            i = rng.randrange(n)
            ptr = 16 + 2 * i
            node = struct.unpack_from("<H", page, ptr)[0]
            if how == "node offset":
                struct.pack_into("<H", page, ptr, rng.choice([0, 8, node + 1, PSIZE - 2]))
            elif how == "node sizes":
                at = node + rng.choice([0, 2, 6])
                struct.pack_into("<H", page, at, struct.unpack_from("<H", page, at)[0] ^ 0x8000)
            else:
                struct.pack_into("<H", page, node + 4, rng.choice([1, 2, 4, 0x20]))
        fh.seek(pgno * PSIZE)
        fh.write(page)
    return f"page {pgno} ({kinds[pgno]}): {how}"


def _copy(src: Path, dest: Path) -> None:
    """Copy a store, keeping its data file sparse (GNU cp)."""
    subprocess.run(["cp", "-r", "--sparse=always", str(src), str(dest)], check=True)


def _account(journal: dict[int, str], salvaged: Path) -> dict[str, int]:
    """Where each acknowledged job went; ``silent``: nowhere."""
    report = json.loads((salvaged / "salvage-report.json").read_text())
    import nbqup

    with nbqup.JobQueue(salvaged, workers=0) as jq:
        kept = {job.id for job in jq.jobs()}
    acked = set(journal.values())
    named = acked & (set(report["lost_ids"]) | set(report["set_aside"]))
    unknown = report["jobs_recorded"] - report["jobs"] - len(report["set_aside"])
    missing = acked - kept - named
    return {
        "acknowledged": len(acked),
        "kept": len(acked & kept),
        "named": len(named),
        "counted": min(len(missing), max(unknown, 0)),
        "silent": max(0, len(missing) - max(unknown, 0)),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.damage", description=__doc__)
    p.formatter_class = argparse.RawDescriptionHelpFormatter  # the docstring as written
    p.add_argument("--copies", type=int, default=40, help="damaged copies (40)")
    p.add_argument("--seed", type=int, default=1, help="seed of the damage (1)")
    p.add_argument(
        "--chaos",
        default="--jobs 500 --kills 20 --seed 1",
        help="options of the chaos run that makes the store (default: %(default)s)",
    )
    p.add_argument("--json", dest="json_path", help="write the results here as JSON")
    p.add_argument("--tmpdir", help="where the stores are made (default: the repository's disk)")
    args = p.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix=".damage-", dir=args.tmpdir or ROOT))
    t0 = time.monotonic()
    try:
        chaos = subprocess.run(
            [sys.executable, "-m", "benchmarks.chaos", *args.chaos.split(), "--systems",
             "nbqup", "--faults", "none", "--keep", "--tmpdir", str(workdir)],
            capture_output=True, text=True, cwd=ROOT,
        )  # fmt: skip
        if chaos.returncode != 0:
            print(chaos.stdout[-2000:], chaos.stderr[-2000:])
            return 1
        folder = next(workdir.glob(".chaos-*")) / "nbqup"
        journal = read_journal(folder)
        rng = random.Random(args.seed)
        rows = []
        for n in range(args.copies):
            copy = workdir / f"copy{n}"
            _copy(folder / "store", copy)
            how = _damage(copy, rng)
            opened = _child(["-c", OPEN, str(copy)], 120)
            salvaged = workdir / f"salvaged{n}"
            salvage = _child(["-m", "nbqup", "salvage", str(copy), "--to", str(salvaged)], 300)
            row = {"damage": how, "open": opened, "salvage": salvage}
            if salvaged.exists():
                row["ran"] = _child(["-c", RUN, str(salvaged)], 600)
                row.update(_account(journal, salvaged))
            rows.append(row)
            print(f"  {n + 1}/{args.copies} {how}: {opened}; salvage: {row.get('kept')} of "
                  f"{row.get('acknowledged')} kept, {row.get('named')} named, "
                  f"{row.get('counted')} counted, {row.get('silent')} silent; {row.get('ran')}",
                  flush=True)  # fmt: skip
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    opens = Counter(r["open"].split(":")[0] for r in rows)
    keys = ("acknowledged", "kept", "named", "counted", "silent")
    totals = {k: sum(int(r.get(k, 0)) for r in rows) for k in keys}
    bad = [
        r
        for r in rows
        if r["open"] not in ("worked", "refused")
        or not r["salvage"].startswith("to use it")
        or r.get("ran") != "ran"
        or r.get("silent")
    ]
    print(
        f"\ndamaged copies: {len(rows)}; opening them: {dict(opens)}; salvage: {totals}; "
        f"{time.monotonic() - t0:.0f} s"
    )
    if args.json_path:
        doc = {"args": vars(args), "opens": dict(opens), "totals": totals, "rows": rows}
        Path(args.json_path).write_text(json.dumps(doc, indent=1) + "\n")
    for r in bad:
        print(f"    problem: {r}")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
