"""Stores to damage, and the damage: shared by the damage and salvage tests.

:func:`build` makes a store of every kind of record; :func:`damaged_copies` yields copies
of it, each with one page header, node or meta page changed (real bytes of a real file).
"""

from __future__ import annotations

import os
import random
import shutil
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from nbqup import JobQueue, lmdbcheck, lmdbfile

WAIT = 60
PSIZE = 4096


def copy_store(src: Path, dest: Path) -> Path:
    """Copy a store, keeping its data file sparse (a plain copy writes the map's holes)."""
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("data.mdb"))
    data = src / "lmdb" / "data.mdb"
    with lmdbfile.DataFile(data) as f:
        used = (lmdbfile.check_meta(f).last_pg + 1) * PSIZE
    with open(data, "rb") as a, open(dest / "lmdb" / "data.mdb", "wb") as b:
        b.write(a.read(used))
        b.truncate(data.stat().st_size)
    return dest


def build(path: Path) -> Path:
    """A store of 300 jobs of every kind: finished and unfinished, values inline and on
    overflow pages (large arguments and logs), a schedule and keys."""
    with JobQueue(path, workers=2) as jq:
        jobs = [jq.submit(pow, 2, i) for i in range(200)]
        jobs += [jq.submit(divmod, 1, 0) for _ in range(20)]
        jobs += [jq.submit(len, os.urandom(6000 + i)) for i in range(10)]
        jobs += [jq.submit(print, "x" * 3000) for _ in range(5)]
        jobs += [jq.options(key=f"k{i}").submit(abs, -i) for i in range(10)]
        assert all(job.wait(WAIT) for job in jobs)
        jq.every("1h").submit(abs, 3)
        jq.after("1h").submit(pow, 3, 3)
    with JobQueue(path, workers=0) as jq:
        for i in range(50):
            jq.submit(pow, 5, i)
    return path


def page_keys(store: Path, pgno: int) -> list[str]:
    """The keys on a leaf page, read the plain way (no lmdbfile)."""
    with open(store / "lmdb" / "data.mdb", "rb") as fh:
        fh.seek(pgno * PSIZE)
        page = fh.read(PSIZE)
    lower = struct.unpack_from("<H", page, 12)[0]
    out = []
    for off in struct.unpack_from(f"<{(lower - 16) // 2}H", page, 16):
        ksize = struct.unpack_from("<H", page, off + 6)[0]
        out.append(page[off + 8 : off + 8 + ksize].decode())
    return out


def page_kinds(store: Path) -> dict[int, str]:
    """What each page of the store's last snapshot is (``"table 'meta': leaf"``)."""
    kinds: dict[int, str] = {}
    with lmdbfile.DataFile(store / "lmdb" / "data.mdb") as f:
        lmdbcheck.check(f, lmdbfile.check_meta(f), kinds=kinds)
    return kinds


# -------------------------------------------------------------------------- damage


def _u16(data: bytearray, at: int, value: int) -> None:
    struct.pack_into("<H", data, at, value)


@dataclass(frozen=True)
class Case:
    name: str
    kind: str  # what the damaged page must be (a substring of its page_kinds entry)
    change: Callable[[bytearray, int], None]  # (file bytes, page offset)
    which: int = 0  # which page of that kind (index into the sorted list, may be < 0)


def _node(page: bytearray, base: int, i: int) -> int:
    return base + struct.unpack_from("<H", page, base + 16 + 2 * i)[0]


def _set_node(field: int, value: int, i: int = 0) -> Callable[[bytearray, int], None]:
    def change(data: bytearray, base: int) -> None:
        _u16(data, _node(data, base, i) + field, value)

    return change


def _header(at: int, value: int) -> Callable[[bytearray, int], None]:
    return lambda data, base: _u16(data, base + at, value)


def _flip(at: int, bit: int) -> Callable[[bytearray, int], None]:
    def change(data: bytearray, base: int) -> None:
        data[base + at] ^= 1 << bit

    return change


def _pgno(delta: int) -> Callable[[bytearray, int], None]:
    def change(data: bytearray, base: int) -> None:
        struct.pack_into("<Q", data, base, struct.unpack_from("<Q", data, base)[0] + delta)

    return change


def _child_pgno(value: int) -> Callable[[bytearray, int], None]:
    def change(data: bytearray, base: int) -> None:
        node = _node(data, base, 1)
        struct.pack_into("<HHH", data, node, value & 0xFFFF, value >> 16 & 0xFFFF, value >> 32)

    return change


def _self_loop(data: bytearray, base: int) -> None:
    _child_pgno(base // PSIZE)(data, base)


FLAGS, LOWER, UPPER = 10, 12, 14
RANDOM_FLIPS = 30
LEAF, BRANCH = "leaf", "branch"
CASES = [
    # page flags
    Case("meta leaf flagged branch", "'meta': leaf", _header(FLAGS, 1)),
    Case("meta leaf flagged overflow", "'meta': leaf", _header(FLAGS, 4), -1),
    Case("meta leaf flagged LEAF2", "'meta': leaf", _header(FLAGS, 0x22), 3),
    Case("meta leaf flags zero", "'meta': leaf", _header(FLAGS, 0), 7),
    Case("meta branch flagged leaf", "'meta': branch", _header(FLAGS, 2)),
    Case("result leaf flag bit", "'result': leaf", _flip(FLAGS, 0)),
    Case("pending leaf flag bit", "'pending': leaf", _flip(FLAGS, 3)),
    Case("main tree flagged branch", "main tree: leaf", _header(FLAGS, 1)),
    Case("free tree flag bit", "free-page tree: leaf", _flip(FLAGS, 1)),
    Case("overflow flagged leaf", "'args': overflow", _header(FLAGS, 2)),
    Case("info leaf flags", "'info': leaf", _header(FLAGS, 0x10)),
    # lower / upper
    Case("lower above upper", "'meta': leaf", lambda d, b: _u16(d, b + LOWER, 4000), 1),
    Case("upper past the page", "'meta': leaf", _header(UPPER, 5000), 2),
    Case("lower odd", "'result': leaf", _flip(LOWER, 0)),
    Case("lower max", "'meta': leaf", _header(LOWER, 0xFFFF), -2),
    Case("upper zero", "'pending': leaf", _header(UPPER, 0)),
    Case("lower high bit", "'meta': branch", _flip(LOWER + 1, 7)),
    Case("upper high bit", "'fn': leaf", _flip(UPPER + 1, 6)),
    Case("main tree lower", "main tree: leaf", _header(LOWER, 200)),
    Case("free tree upper", "free-page tree: leaf", _header(UPPER, 17)),
    # page numbers
    Case("meta leaf pgno", "'meta': leaf", _pgno(1), 5),
    Case("meta branch pgno", "'meta': branch", _pgno(-1)),
    Case("result leaf pgno high bit", "'result': leaf", _flip(5, 0), -1),
    Case("overflow pgno", "'logs': overflow", _pgno(3)),
    Case("branch child out of range", "'meta': branch", _child_pgno(10**9)),
    Case("branch child is the meta page", "'meta': branch", _child_pgno(0)),
    Case("branch child is itself", "'meta': branch", _self_loop),
    # nodes
    Case("node offset into the header", "'meta': leaf", _header(16, 4), 4),
    Case("node offset at the page end", "'meta': leaf", _header(16, PSIZE - 2), 6),
    Case("node offset odd", "'result': leaf", _flip(16, 0), 2),
    Case("node offset in a branch", "'meta': branch", _header(18, 8)),
    Case("node data size huge", "'meta': leaf", _set_node(2, 0xFFFF), 8),
    Case("node data size bit", "'result': leaf", _set_node(0, 0x7FFF), 3),
    Case("node key size huge", "'meta': leaf", _set_node(6, 0xFFFF), 9),
    Case("node key size zero", "'pending': leaf", _set_node(6, 0)),
    Case("node flagged dupdata", "'meta': leaf", _set_node(4, 4), 10),
    Case("node flagged subdata", "'result': leaf", _set_node(4, 2), 4),
    Case("node flagged bigdata", "'meta': leaf", _set_node(4, 1), 11),
    Case("overflow node size", "'args': leaf", _set_node(2, 0x10)),
    Case("main tree node flags", "main tree: leaf", _set_node(4, 0, 3)),
    Case("main tree node data size", "main tree: leaf", _set_node(0, 40, 5)),
    Case("overflow run length", "'args': overflow", _header(12, 0xFFFF), 2),
]
META_CASES = [
    # (name, offset in the newest meta page, bit): magic, roots, last page, txnid
    ("meta magic", 16, 0),
    ("meta main root", 16 + 24 + 48 + 40 + 2, 3),
    ("meta free root", 16 + 24 + 40 + 1, 6),
    ("meta last page", 16 + 24 + 96 + 3, 1),
    ("meta txnid", 16 + 24 + 96 + 8 + 2, 4),
    ("meta main depth", 16 + 24 + 48 + 6, 4),
    ("meta main entries", 16 + 24 + 48 + 32, 2),
]


def damaged_copies(template: Path, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    kinds = page_kinds(template)
    with lmdbfile.DataFile(template / "lmdb" / "data.mdb") as f:
        newest = lmdbfile.check_meta(f).slot
    for n, case in enumerate(CASES):
        pages = sorted(p for p, k in kinds.items() if case.kind in k)
        assert pages, f"the template has no {case.kind} page"
        pgno = pages[case.which % len(pages)]
        yield (
            case.name,
            damage_copy(
                template, tmp_path / f"c{n}", lambda d, p=pgno, c=case: c.change(d, p * PSIZE)
            ),
        )
    for n, (name, at, bit) in enumerate(META_CASES):
        change = _flip(newest * PSIZE + at, bit)
        yield name, damage_copy(template, tmp_path / f"m{n}", lambda d, c=change: c(d, 0))
    rnd = random.Random(12)
    for n in range(RANDOM_FLIPS):  # any bit of a live page's number, flags, bounds
        pgno = rnd.choice(sorted(kinds))
        at, bit = rnd.choice([*range(8), *range(10, 16)]), rnd.randrange(8)
        name = f"random flip: page {pgno} ({kinds[pgno]}), byte {at}, bit {bit}"
        change = _flip(pgno * PSIZE + at, bit)
        yield name, damage_copy(template, tmp_path / f"r{n}", lambda d, c=change: c(d, 0))


def damage_copy(template: Path, dest: Path, change: Callable[[bytearray], None]) -> Path:
    """A copy of ``template`` at ``dest`` whose data file ``change`` (its used bytes)."""
    copy_store(template, dest)
    data_path = dest / "lmdb" / "data.mdb"
    with lmdbfile.DataFile(data_path) as f:
        size = (lmdbfile.check_meta(f).last_pg + 1) * PSIZE
    with open(data_path, "r+b") as fh:
        used = bytearray(fh.read(size))
        before = bytes(used)
        change(used)
        assert used != before
        fh.seek(0)
        fh.write(used)
    return dest
