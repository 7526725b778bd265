"""``nbqup salvage PATH``: copy what still reads of a damaged store into a fresh one.

The damaged store is read without LMDB, by :func:`nbqup.lmdbcheck.read_tolerant` (pure
Python; every page and node is checked before it is read), so salvaging cannot crash
whatever the damage: a damaged page loses the records under it, a damaged node its own.
If the last commit's meta page or main tree is unreadable, the previous commit is read
instead (LMDB keeps it whole until the next commit; one commit is lost).

Into a fresh store (``PATH.salvaged`` unless told otherwise; an existing path is never
overwritten) go:

- every job record that decodes; one that fails its checksum is set aside in the new
  store (``jq.corrupt`` lists it), as opening a store does;
- every payload that decodes -- functions, arguments, results, checkpoints, logs, rich
  outputs, schedules, records set aside before -- and the keys and pending requests;
- the index of unfinished jobs, rebuilt from the records (so an unfinished job whose
  index entry was lost resumes too), and the finished counts, counted afresh.

What was lost is reported: job ids that other tables name but whose record is gone,
how many records the damaged pages held (their ids are unknown), payloads that failed
their checksum, and unfinished jobs left without their function or arguments (they will
fail, saying so, when run).  The full report is also written to the new store's
``salvage-report.json``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .backends import TABLES
from .codec import RAW_TABLES, decode
from .errors import NbqupError, StoreCorrupt
from .lmdbcheck import Tolerant, read_tolerant
from .lmdbfile import DataFile, Meta, newest_txnid, read_metas
from .records import FINAL
from .store import Store

__all__ = ["REPORT", "SalvageReport", "salvage"]

#: The file in the new store's directory that holds the whole report.
REPORT = "salvage-report.json"
_SHOWN = 20  # ids listed in the printed report (all are in the file)
_BATCH = 5000  # records per write
_INFO_OWN = {"format", "finished"}  # the new store's own


@dataclass
class SalvageReport:
    """What :func:`salvage` copied and what it lost."""

    source: str
    dest: str
    txnid: int
    previous_commit: bool
    #: Job records copied / recorded by the damaged store's own count.
    jobs: int = 0
    jobs_recorded: int = 0
    unfinished: int = 0
    #: Ids other tables name whose job record is lost.
    lost_ids: list[str] = field(default_factory=list)
    #: Job records that failed their checksum: set aside in the new store.
    set_aside: list[str] = field(default_factory=list)
    #: Unfinished jobs copied without their function or arguments.
    incomplete: list[str] = field(default_factory=list)
    #: table -> [copied, recorded] for every table.
    tables: dict[str, list[int]] = field(default_factory=dict)
    #: "table/key" of payloads that failed their checksum (not copied).
    bad_payloads: list[str] = field(default_factory=list)
    faults: list[str] = field(default_factory=list)

    @property
    def lost(self) -> bool:
        """Was anything lost?"""
        return bool(
            self.jobs < self.jobs_recorded
            or self.lost_ids
            or self.set_aside
            or self.bad_payloads
            or self.faults
            or self.previous_commit
            or any(copied < recorded for copied, recorded in self.tables.values())
        )

    def lines(self) -> list[str]:
        """The report as printed by ``nbqup salvage``."""
        commit = "the commit before its last (the last one is unreadable)"
        out = [
            f"salvaged store {self.source} into {self.dest}, from "
            f"{commit if self.previous_commit else 'its last commit'} "
            f"(transaction {self.txnid})",
            f"jobs: {self.jobs} of {self.jobs_recorded} copied "
            f"({self.jobs - self.unfinished} finished, {self.unfinished} unfinished)",
        ]
        unknown = self.jobs_recorded - self.jobs - len(self.set_aside)
        if self.lost_ids or unknown > 0:
            parts = [f"{len(self.lost_ids)} named by other tables: {_ids(self.lost_ids)}"]
            if unknown > 0:
                parts.append(f"{unknown} more on damaged pages, ids unknown")
            out.append(f"lost jobs: {'; '.join(parts)}")
        if self.set_aside:
            out.append(
                f"set aside: {len(self.set_aside)} job records that fail their checksum "
                f"(jq.corrupt lists them): {_ids(self.set_aside)}"
            )
        if self.incomplete:
            out.append(
                f"incomplete: {len(self.incomplete)} unfinished jobs lost their function or "
                f"arguments and will fail when run: {_ids(self.incomplete)}"
            )
        if self.bad_payloads:
            out.append(
                f"unreadable payloads (not copied): {len(self.bad_payloads)}: "
                f"{_ids(self.bad_payloads)}"
            )
        shown = [f"{t} {c}/{r}" for t, (c, r) in sorted(self.tables.items()) if r or c]
        out.append(f"records copied/recorded: {', '.join(shown)}")
        out += [f"damage: {fault}" for fault in self.faults[:_SHOWN]]
        if len(self.faults) > _SHOWN:
            out.append(f"damage: ... and {len(self.faults) - _SHOWN} more")
        out.append(
            "nothing was lost" if not self.lost else f"the full report: {self.dest}/{REPORT}"
        )
        out.append(
            f"to use it, stop every process using {self.source}, then: "
            f"mv {self.source} {self.source}.damaged && mv {self.dest} {self.source}"
        )
        return out


def _ids(ids: list[str]) -> str:
    more = f", ... and {len(ids) - _SHOWN} more" if len(ids) > _SHOWN else ""
    return ", ".join(ids[:_SHOWN]) + more


class SalvageError(NbqupError, RuntimeError):
    """Nothing could be salvaged, or the copy could not be made."""


def salvage(source: str | Path, dest: str | Path | None = None) -> SalvageReport:
    """Copy every record of the store in ``source`` that still reads into a new store in
    ``dest`` (default ``SOURCE.salvaged``; it must not exist) and report what was lost.

    Stop the processes using the store first: a store that changes while it is read is
    refused.
    """
    source = Path(source).expanduser().absolute()
    target = (
        Path(dest).expanduser().absolute() if dest else source.with_name(source.name + ".salvaged")
    )
    data = source / "lmdb" / "data.mdb"
    if not data.is_file():
        raise SalvageError(f"no store to salvage at {source}: it has no lmdb/data.mdb")
    if target.exists():
        raise SalvageError(f"{target} already exists; give another path with --to")
    with DataFile(data) as f:
        if f.size == 0:
            raise SalvageError(f"nothing to salvage in {source}: its data file is empty")
        before = newest_txnid(f)
        read, previous = _read(f, source)
        if newest_txnid(f) > before + 1:
            raise SalvageError(
                f"store {source} changed while it was read: stop the processes using it and "
                "run salvage again"
            )
    report = SalvageReport(str(source), str(target), read.meta.txnid, previous)
    report.faults = read.faults
    store = Store(target)
    try:
        _copy(read, store, report)
    finally:
        store.close()
    (target / REPORT).write_text(json.dumps({"at": time.time(), **asdict(report)}, indent=1))
    return report


def _read(f: DataFile, source: Path) -> tuple[Tolerant, bool]:
    """The snapshot that gives the most records: the last commit's, unless damage there
    loses more than reading the commit before it; whether it is the one before."""
    metas = read_metas(f)
    faults = [f"meta page {i}: {m}" for i, m in enumerate(metas) if isinstance(m, str)]
    found = sorted((m for m in metas if isinstance(m, Meta)), key=lambda m: -m.txnid)
    reads = [read_tolerant(f, meta) for meta in found]
    usable = [r for r in reads if r.tables]
    if not usable:
        faults += [fault for r in reads for fault in r.faults]
        raise SalvageError(f"nothing of {source} reads: {'; '.join(faults) or 'no meta page'}")
    best = max(usable, key=lambda r: sum(map(len, r.tables.values())))
    if sum(map(len, best.tables.values())) == sum(map(len, usable[0].tables.values())):
        best = usable[0]
    best.faults[:0] = faults
    return best, best is not reads[0] or bool(faults)


#: Payload tables keyed by job id (or, for arguments, a schedule's id).
_BY_JOB = ("args", "result", "ckpt", "logs", "rich")


def _copy(read: Tolerant, store: Store, report: SalvageReport) -> None:
    tables = read.tables
    for name in sorted(set(tables) - set(TABLES)):
        report.faults.append(f"table {name!r} is unknown to this nbqup: not copied")
    copied: dict[str, set[str]] = {}
    for name in TABLES:
        if name == "pending":  # rebuilt from the job records below
            continue
        puts = []
        for key, value in tables.get(name, {}).items():
            if name == "info" and key in _INFO_OWN:
                continue
            if name not in RAW_TABLES and name != "meta":
                try:
                    decode(value)
                except ValueError:
                    report.bad_payloads.append(f"{name}/{key}")
                    continue
            puts.append((name, key, value))
        copied[name] = {key for _, key, _ in puts}
        if name == "info":  # the new store has its own of these
            copied[name] |= _INFO_OWN & set(tables.get(name, {}))
        _write(store, puts)
    pending = []
    for rec in list(store.scan()):
        if isinstance(rec, StoreCorrupt):  # fails its checksum: set aside, as on opening
            store.set_aside(str(rec.key), rec.reason)
            report.set_aside.append(str(rec.key))
            continue
        report.jobs += 1
        if rec.status not in FINAL:
            pending.append(("pending", rec.id, b""))
            if (rec.fn is not None and rec.fn not in copied["fn"]) or (
                rec.has_args and (rec.args_ref or rec.id) not in copied["args"]
            ):
                report.incomplete.append(rec.id)
    _write(store, pending)
    copied["pending"] = {key for _, key, _ in pending}
    copied["meta"] -= set(report.set_aside)
    report.unfinished = len(pending)
    store.recount()
    store.finished_counts()  # counted afresh
    report.jobs_recorded = read.recorded.get("meta", 0)
    named = {key for t in (*_BY_JOB, "pending") for key in tables.get(t, {})}
    named |= {key for key in tables.get("requests", {}) if not key.startswith("@")}
    named |= {k.split("/", 1)[0] for t in ("steps", "stepres") for k in tables.get(t, {})}
    named |= {
        value.decode(errors="replace")
        for key, value in tables.get("keys", {}).items()
        if not key.startswith("schedule:")
    }
    known = (
        set(tables.get("meta", {})) | set(tables.get("sched", {})) | set(tables.get("corrupt", {}))
    )
    report.lost_ids = sorted(named - known)
    report.tables = {t: [len(copied[t]), read.recorded.get(t, 0)] for t in TABLES}


def _write(store: Store, puts: list[tuple[str, str, bytes]]) -> None:
    for lo in range(0, len(puts), _BATCH):
        store.put_stored(puts[lo : lo + _BATCH])
