"""``nbqup salvage``: what still reads of a damaged store, copied into a fresh one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from damage import (
    PSIZE,
    WAIT,
    build,
    copy_store,
    damage_copy,
    damaged_copies,
    page_keys,
    page_kinds,
)

from nbqup import JobQueue, lmdbfile
from nbqup.backends import TABLES
from nbqup.errors import NbqupError, StoreCorrupt
from nbqup.salvage import REPORT, SalvageError, salvage
from nbqup.store import Store


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("template") / "store")


def tables(path: Path) -> dict[str, list[tuple[str, bytes]]]:
    s = Store(path)
    try:
        return {t: s.backend.items(t) for t in TABLES}
    finally:
        s.close()


def jobs(path: Path) -> dict[str, tuple[Any, ...]]:
    """Every job as a user sees it: status, name, result or error, logs."""
    out = {}
    with JobQueue(path, workers=0) as jq:
        for job in jq.jobs():
            result = job.record.error
            if job.status == "succeeded":
                try:
                    result = job.result()
                except StoreCorrupt:
                    result = "unreadable"
            out[job.id] = (str(job.status), job.name, result, job.logs)
        assert len(jq.jobs_df()) == len(out)
    return out


def test_salvaging_a_healthy_store_loses_nothing(template: Path, tmp_path: Path) -> None:
    src = copy_store(template, tmp_path / "store")
    report = salvage(src)
    dest = tmp_path / "store.salvaged"
    assert report.dest == str(dest)
    assert not report.lost
    assert report.lines()[-2] == "nothing was lost"
    assert report.jobs == report.jobs_recorded == 296
    assert report.unfinished == 51  # 50 queued, one scheduled in an hour
    assert tables(dest) == tables(src)  # every record, byte for byte, counts included
    assert jobs(dest) == jobs(src)
    keyed = dict(tables(src)["keys"])["k3"].decode()
    with JobQueue(dest, workers=0) as jq:
        assert len(jq.schedules()) == 1
        assert jq.options(key="k3").submit(abs, -3).id == keyed  # re-attaches, as before


def test_salvaging_a_damaged_store_copies_every_readable_job_and_names_the_lost(
    template: Path, tmp_path: Path
) -> None:
    """A meta leaf page and a result leaf page unreadable, and one job record that fails
    its checksum: the rest is copied, the new store opens, its unfinished jobs run."""
    kinds = page_kinds(template)
    meta_leaf = sorted(p for p, k in kinds.items() if k == "table 'meta': leaf")[3]
    result_leaf = sorted(p for p, k in kinds.items() if k == "table 'result': leaf")[0]
    lost = set(page_keys(template, meta_leaf))
    lost_results = set(page_keys(template, result_leaf))
    before = jobs(template)
    bad_record = sorted(set(before) - lost)[-1]  # an unfinished job's record, damaged below
    assert before[bad_record][0] == "queued"
    (home,) = [
        p
        for p, k in kinds.items()
        if k == "table 'meta': leaf" and bad_record in page_keys(template, p)
    ]

    def change(data: bytearray) -> None:
        data[meta_leaf * PSIZE + 10] = 0  # flags: not a page of any kind
        data[result_leaf * PSIZE + 10] = 0x41
        # the id inside the pickled record (a key is followed by its value, not by MEMOIZE)
        at = data.index(bad_record.encode() + b"\x94", home * PSIZE, (home + 1) * PSIZE)
        data[at + 3] ^= 0xFF

    src = damage_copy(template, tmp_path / "store", change)
    with pytest.raises(StoreCorrupt, match="nbqup salvage"):
        JobQueue(src, workers=0)
    report = salvage(src, tmp_path / "new")
    assert report.set_aside == [bad_record]
    assert report.jobs == len(before) - len(lost) - 1
    assert report.jobs_recorded == len(before)
    assert set(report.lost_ids) == lost  # each has arguments: the args table names them
    assert report.tables["result"][0] == report.tables["result"][1] - len(lost_results)
    text = "\n".join(report.lines())
    assert (
        f"set aside: 1 job records that fail their checksum (jq.corrupt lists them): {bad_record}"
        in text
    )
    assert "damage: table 'meta': page" in text and "damage: table 'result': page" in text
    after = jobs(tmp_path / "new")
    assert set(after) == set(before) - lost - {bad_record}
    for job_id, (status, name, result, logs) in after.items():
        if job_id not in lost_results:
            assert (status, name, result, logs) == before[job_id]
    queued = [job_id for job_id, v in after.items() if v[0] == "queued"]
    with JobQueue(tmp_path / "new", workers=2) as jq:
        assert [entry[0] for entry in jq.corrupt] == [bad_record]
        assert set(queued) == {i for i, v in before.items() if v[0] == "queued"} - lost - {
            bad_record
        }
        assert all(jq.get(job_id).wait(WAIT) for job_id in queued)  # they run
        assert {jq.get(job_id).status for job_id in queued} == {"succeeded"}
        counts = jq.counts()
    finished = sum(1 for v in after.values() if v[0] in ("succeeded", "failed"))
    assert counts["succeeded"] + counts["failed"] == finished + len(queued)


def test_a_damaged_last_commit_is_salvaged_from_the_one_before(
    template: Path, tmp_path: Path
) -> None:
    with lmdbfile.DataFile(template / "lmdb" / "data.mdb") as f:
        newest = lmdbfile.check_meta(f).slot

    def change(data: bytearray) -> None:
        data[newest * PSIZE + 16] ^= 0x10  # the magic number of the last commit's meta page

    src = damage_copy(template, tmp_path / "store", change)
    report = salvage(src)
    assert report.previous_commit
    assert report.lines()[0].endswith(
        f"from the commit before its last (the last one is unreadable) (transaction {report.txnid})"
    )
    before, after = jobs(template), jobs(tmp_path / "store.salvaged")
    assert set(after) <= set(before) and len(before) - len(after) <= 1  # one commit lost


def test_salvage_survives_every_kind_of_damage(template: Path, tmp_path: Path) -> None:
    """Salvage reads each damaged copy of the open-time damage test (79 kinds) without
    LMDB: it never fails but to say nothing reads, and what it makes opens."""
    outcomes = {}
    for n, (name, store) in enumerate(damaged_copies(template, tmp_path)):
        try:
            report = salvage(store, tmp_path / f"s{n}")
        except SalvageError as exc:
            outcomes[name] = str(exc)
            continue
        with JobQueue(tmp_path / f"s{n}", workers=0) as jq:
            assert len(jq.jobs_df()) == report.jobs == len(jq.jobs())
        outcomes[name] = report.jobs
    failed = {name: out for name, out in outcomes.items() if isinstance(out, str)}
    assert not failed
    assert sum(outcomes.values()) >= 0.9 * 296 * len(outcomes)  # most of the jobs come back


def test_salvage_never_overwrites_and_needs_a_store(template: Path, tmp_path: Path) -> None:
    src = copy_store(template, tmp_path / "store")
    (tmp_path / "taken").mkdir()
    with pytest.raises(SalvageError, match="taken already exists; give another path with --to"):
        salvage(src, tmp_path / "taken")
    assert list((tmp_path / "taken").iterdir()) == []
    os.truncate(src / "lmdb" / "data.mdb", 0)
    with pytest.raises(SalvageError, match=r"nothing to salvage in .*: its data file is empty"):
        salvage(src)
    with pytest.raises(NbqupError, match="no store to salvage"):
        salvage(tmp_path / "nowhere")


def cli(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nbqup", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_salvage_command(template: Path, tmp_path: Path) -> None:
    src = copy_store(template, tmp_path / "store")
    proc = cli("salvage", src)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(
        f"salvaged store {src} into {src}.salvaged, from its last commit (transaction "
    )
    assert "jobs: 296 of 296 copied (245 finished, 51 unfinished)" in lines
    assert lines[-1] == (
        f"to use it, stop every process using {src}, then: "
        f"mv {src} {src}.damaged && mv {src}.salvaged {src}"
    )
    assert (Path(f"{src}.salvaged") / REPORT).exists()
    again = cli("salvage", src)
    assert again.returncode == 1 and again.stdout == ""
    assert again.stderr == f"nbqup: {src}.salvaged already exists; give another path with --to\n"
    assert cli("salvage", src, "--to", tmp_path / "other").returncode == 0
    missing = cli("salvage", tmp_path / "nope")
    assert missing.returncode == 2
    assert missing.stderr == f"nbqup: no store at {tmp_path / 'nope'}: no such directory\n"
