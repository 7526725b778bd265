"""LMDB's data file, read page by page in pure Python: its format, and a walk of its
B-trees that checks every page and node before reading it (see :mod:`nbqup.lmdbcheck`).

The file is read with ``os.pread``, never mapped: a file truncated under us gives a short
read here, not a SIGBUS.

The format (``mdb.c``, LMDB 0.9, as the ``lmdb`` package writes it on a 64-bit
little-endian machine)
---------------------------------------------------------------------------------------
Every page starts with a 16-byte header ``pgno u64, pad u16, flags u16, lower u16, upper
u16`` (an overflow page has ``pages u32`` in place of lower and upper); flags
``P_BRANCH=1, P_LEAF=2, P_OVERFLOW=4, P_META=8``.  Pages 0 and 1 are the meta pages:
transaction N writes meta N % 2, so they hold txnids N and N-1, and LMDB uses the newer.
After a meta page's header: ``magic u32 (0xBEEFC0DE), version u32 (1), address u64,
mapsize u64, dbs[2], last_pg u64, txnid u64``, a db (``MDB_db``) being ``pad u32, flags
u16, depth u16, branch_pages u64, leaf_pages u64, overflow_pages u64, entries u64, root
u64``.  dbs[0] is the free-page tree (its pad holds the page size), dbs[1] the main tree,
whose leaf nodes name the other tables (node flag ``F_SUBDATA=2``; data: their
``MDB_db``).  A branch or leaf page lists ``(lower - 16) / 2`` u16 node offsets after its
header; a node is ``lo u16, hi u16, flags u16, ksize u16``, then the key, then (in a leaf)
the data.  In a branch node lo, hi and flags make the child's page number; in a leaf node
lo and hi make the data size and, with ``F_BIGDATA=1``, the data is the u64 number of the
first of a run of overflow pages that hold the value after their header.  The free tree
maps txnids (u64 keys) to lists of free pages: ``count u64``, then that many numbers.
"""

from __future__ import annotations

import os
import struct
import sys
from array import array
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

__all__ = [
    "Damage",
    "DataFile",
    "Meta",
    "Tree",
    "Walk",
    "check_meta",
    "check_root",
    "free_list",
    "leaf_nodes",
    "newest_txnid",
    "node_offsets",
    "read_metas",
    "table_entry",
    "table_leaf",
]

MAGIC = 0xBEEFC0DE
DATA_VERSION = 1
PAGEHDRSZ = 16
NODESIZE = 8
P_BRANCH, P_LEAF, P_OVERFLOW, P_META = 0x01, 0x02, 0x04, 0x08
F_BIGDATA, F_SUBDATA = 0x01, 0x02
P_INVALID = 2**64 - 1  # the root of an empty tree
MAX_KEY = 511  # the key size limit the lmdb package is built with
CURSOR_STACK = 32  # LMDB's cursors hold at most this many levels
FREE_FLAGS = 0x08  # MDB_INTEGERKEY: the free tree's keys are txnids

_HEADER = struct.Struct("<QHHHH")
_RUN = struct.Struct("<I")  # an overflow page's number of pages, at offset 12
U64 = struct.Struct("<Q")
_DB = struct.Struct("<IHHQQQQQ")
_META = struct.Struct("<IIQQ" + "IHHQQQQQ" * 2 + "QQ")
#: The byte order this walk reads; LMDB writes the machine's own.
SUPPORTED = sys.byteorder == "little"


class Damage(Exception):
    """What is wrong with the file, in words (the caller names the store)."""


class Tree(NamedTuple):
    """An ``MDB_db``: where one table's B-tree starts and what it should hold."""

    pad: int
    flags: int
    depth: int
    branch_pages: int
    leaf_pages: int
    overflow_pages: int
    entries: int
    root: int


@dataclass(frozen=True)
class Meta:
    """One of the two meta pages: the root of one committed snapshot."""

    slot: int
    txnid: int
    last_pg: int
    psize: int
    mapsize: int
    free: Tree
    main: Tree


class DataFile:
    """``data.mdb``, read with ``os.pread``; a context manager."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))

    @property
    def size(self) -> int:
        return os.fstat(self._fd).st_size

    def read(self, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes from ``offset`` (fewer past the end of the file)."""
        return os.pread(self._fd, size, offset)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> DataFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------------------ metas


def read_metas(f: DataFile) -> list[Meta | str]:
    """Both meta pages, each a :class:`Meta` or the reason it is unusable."""
    size = PAGEHDRSZ + _META.size
    first = _parse_meta(0, f.read(0, size))
    psize = first.psize if isinstance(first, Meta) else 0
    if not psize:  # LMDB finds meta 1 by meta 0's page size; try the usual ones
        for guess in (4096, 8192, 16384, 65536, 2048, 1024, 512):
            second = _parse_meta(1, f.read(guess, size))
            if isinstance(second, Meta) and second.psize == guess:
                return [first, second]
        return [first, "cannot be found without meta page 0's page size"]
    return [first, _parse_meta(1, f.read(psize, size))]


def _parse_meta(slot: int, data: bytes) -> Meta | str:
    if len(data) < PAGEHDRSZ + _META.size:
        return "the file ends before it"
    pgno, _pad, flags, _lower, _upper = _HEADER.unpack_from(data)
    fields = _META.unpack_from(data, PAGEHDRSZ)
    magic, version = fields[:2]
    if magic != MAGIC:
        return f"bad magic number {magic:#x}"
    if pgno != slot or flags != P_META:
        return f"its header says page {pgno}, flags {flags:#x}"
    if version != DATA_VERSION:
        return f"unknown LMDB data version {version}"
    free, main = Tree(*fields[4:12]), Tree(*fields[12:20])
    psize = free.pad
    if not (512 <= psize <= 65536 and psize & (psize - 1) == 0):
        return f"bad page size {psize}"
    return Meta(slot, fields[21], fields[20], psize, fields[3], free, main)


def check_meta(f: DataFile) -> Meta:
    """The meta page LMDB would use, checked: raises :class:`Damage` where LMDB would
    refuse the file or be misled by it (a root or last page out of range, a wild txnid)."""
    metas = read_metas(f)
    bad = [f"meta page {slot}: {m}" for slot, m in enumerate(metas) if isinstance(m, str)]
    if len(bad) == 2:
        raise Damage(f"not an LMDB data file ({bad[0]}; {bad[1]})")
    if bad:
        raise Damage(bad[0])
    m0, m1 = metas
    assert isinstance(m0, Meta) and isinstance(m1, Meta)
    if m0.psize != m1.psize:
        raise Damage(f"the meta pages disagree on the page size ({m0.psize}, {m1.psize})")
    if abs(m0.txnid - m1.txnid) != 1 and m0.txnid + m1.txnid != 0:
        raise Damage(f"the meta pages' transaction ids {m0.txnid} and {m1.txnid} do not follow")
    meta = m1 if m1.txnid > m0.txnid else m0
    # LMDB maps (and, with writemap, extends the file to) at least this many pages.
    pages = max(f.size, meta.mapsize) // meta.psize
    if not 1 <= meta.last_pg < pages:
        raise Damage(
            f"meta page {meta.slot} says the last page is {meta.last_pg}, but the file "
            f"and its map hold {pages} pages"
        )
    check_root(meta.free, meta, "the free-page tree", FREE_FLAGS)
    check_root(meta.main, meta, "the main tree", 0)
    return meta


def newest_txnid(f: DataFile) -> int:
    """The larger txnid of the two meta pages (-1 if neither reads)."""
    return max((m.txnid for m in read_metas(f) if isinstance(m, Meta)), default=-1)


def check_root(tree: Tree, meta: Meta, what: str, flags: int) -> None:
    if tree.flags != flags:
        raise Damage(f"{what} has flags {tree.flags:#x}, expected {flags:#x}")
    if tree.root == P_INVALID:
        if tree.depth or tree.entries or tree.branch_pages or tree.leaf_pages:
            raise Damage(f"{what} is empty, yet it counts pages or entries")
    elif not 2 <= tree.root <= meta.last_pg:
        raise Damage(f"{what}: root page {tree.root} is out of range 2..{meta.last_pg}")
    elif not 1 <= tree.depth <= CURSOR_STACK:
        raise Damage(f"{what} has depth {tree.depth}")


# ------------------------------------------------------------------------------ walking

Leaf = Callable[[int, bytes, "array[int]", int], None]
NodeFn = Callable[[bytes, int, int, int, int], None]  # (page, ksize, flags, size, start)


class Walk:
    """The pages of one snapshot, each reached at most once.  Strict (``faults`` None): a
    fault raises :class:`Damage`; tolerant: a damaged page is noted in ``faults`` and
    what hangs under it skipped."""

    def __init__(
        self,
        f: DataFile,
        meta: Meta,
        faults: list[str] | None = None,
        kinds: dict[int, str] | None = None,
    ) -> None:
        self.f, self.meta, self.psize = f, meta, meta.psize
        self.faults, self.kinds = faults, kinds
        self.seen = bytearray(meta.last_pg + 1)
        self.seen[0] = self.seen[1] = 1

    def page(self, pgno: int, level: int, what: str) -> tuple[bytes, array[int], int]:
        """A branch (``level`` > 1) or leaf page, checked: ``(bytes, as u16s, the lowest
        offset a node may have)``."""
        last = self.meta.last_pg
        if not 2 <= pgno <= last:
            raise Damage(f"{what}: page number {pgno} is out of range 2..{last}")
        if self.seen[pgno]:
            raise Damage(f"{what}: page {pgno} is reached twice")
        self.seen[pgno] = 1
        psize = self.psize
        data = self.f.read(pgno * psize, psize)
        if len(data) < psize:
            raise Damage(f"{what}: page {pgno} lies past the end of the file")
        number, _pad, flags, lower, upper = _HEADER.unpack_from(data)
        if number != pgno:
            raise Damage(f"{what}: page {pgno}'s header says it is page {number}")
        want = P_LEAF if level == 1 else P_BRANCH
        if flags != want:
            kind = "leaf" if want == P_LEAF else "branch"
            raise Damage(f"{what}: page {pgno} has flags {flags:#x}, not a {kind} page's")
        h = array("H", data)
        if not PAGEHDRSZ < lower <= psize or lower & 1:
            raise Damage(f"{what}: page {pgno} has bounds lower={lower}, upper={upper}")
        if self.faults is not None:  # tolerant: each node is checked against the page
            upper = lower
        elif not lower <= upper <= psize or min(h[8 : 8 + ((lower - PAGEHDRSZ) >> 1)]) != upper:
            # LMDB keeps its nodes packed from upper to the end of the page
            raise Damage(f"{what}: page {pgno} has bounds lower={lower}, upper={upper}")
        if self.kinds is not None:
            self.kinds[pgno] = f"{what}: {'leaf' if level == 1 else 'branch'}"
        return data, h, upper

    def overflow(self, page: bytes, start: int, size: int, what: str) -> int:
        """Check the run of overflow pages a node at ``start`` names for its ``size``-byte
        value; returns the run's length."""
        pgno = U64.unpack_from(page, start)[0]
        last = self.meta.last_pg
        if not 2 <= pgno <= last:
            raise Damage(f"{what}: overflow page {pgno} is out of range 2..{last}")
        head = self.f.read(pgno * self.psize, PAGEHDRSZ)
        if len(head) < PAGEHDRSZ:
            raise Damage(f"{what}: overflow page {pgno} lies past the end of the file")
        number, _pad, flags = _HEADER.unpack_from(head)[:3]
        (run,) = _RUN.unpack_from(head, 12)
        if number != pgno:
            raise Damage(f"{what}: overflow page {pgno}'s header says it is page {number}")
        if flags != P_OVERFLOW:
            raise Damage(f"{what}: page {pgno} is not an overflow page (flags {flags:#x})")
        if not 1 <= run <= last - pgno + 1 or size > run * self.psize - PAGEHDRSZ:
            raise Damage(f"{what}: overflow page {pgno} runs {run} pages, for {size} bytes")
        if self.seen.find(1, pgno, pgno + run) != -1:
            raise Damage(f"{what}: overflow pages {pgno}..{pgno + run - 1} are reached twice")
        self.seen[pgno : pgno + run] = b"\x01" * run
        if self.kinds is not None:
            self.kinds[pgno] = f"{what}: overflow"
        return run

    def value(self, page: bytes, flags: int, start: int, size: int) -> bytes:
        """A node's value (checked by :meth:`overflow` first if it has ``F_BIGDATA``)."""
        if flags & F_BIGDATA:
            first = U64.unpack_from(page, start)[0]
            return self.f.read(first * self.psize + PAGEHDRSZ, size)
        return page[start : start + size]

    def tree(self, tree: Tree, what: str, leaf: Leaf) -> tuple[int, int]:
        """Walk a B-tree, checking every branch node and calling ``leaf(pgno, page, u16s,
        upper)`` on each leaf page; returns ``(branch pages, leaf pages)``."""
        if tree.root == P_INVALID:
            return 0, 0
        psize = self.psize
        branches = leaves = 0
        stack = [(tree.root, tree.depth)]
        while stack:
            pgno, level = stack.pop()
            try:
                page, h, upper = self.page(pgno, level, what)
                if level == 1:
                    leaves += 1
                    leaf(pgno, page, h, upper)
                    continue
                branches += 1
                for i, off in enumerate(h[8 : 8 + ((h[6] - PAGEHDRSZ) >> 1)]):
                    if off < upper or off > psize - NODESIZE or off & 1:
                        raise Damage(f"{what}: page {pgno} node {i} at offset {off}")
                    n = off >> 1
                    if off + NODESIZE + h[n + 3] > psize:
                        raise Damage(f"{what}: page {pgno} node {i} has a {h[n + 3]}-byte key")
                    stack.append((h[n] | h[n + 1] << 16 | h[n + 2] << 32, level - 1))
            except Damage as exc:
                if self.faults is None:
                    raise
                self.faults.append(f"{exc}: what it holds is lost")
        return branches, leaves


def leaf_nodes(
    pgno: int,
    h: array[int],
    offsets: Iterable[int],
    upper: int,
    psize: int,
    what: str,
    allowed: int,
) -> list[tuple[int, int, int, int]]:
    """Leaf nodes at ``offsets`` of a page, checked: ``(flags, key size, data size, data
    offset)`` each; besides 0, only the node flags in ``allowed``."""
    out = []
    for off in offsets:
        if off < upper or off > psize - NODESIZE or off & 1:
            raise Damage(f"{what}: page {pgno} has a node at offset {off}")
        n = off >> 1
        ksize, flags, size = h[n + 3], h[n + 2], h[n] | h[n + 1] << 16
        start = off + NODESIZE + ksize
        if not 0 < ksize <= MAX_KEY:
            raise Damage(f"{what}: page {pgno} has a node with a {ksize}-byte key")
        if flags == 0:
            if start + size > psize:
                raise Damage(f"{what}: page {pgno} has a node overrunning the page")
        elif flags & ~allowed or start + 8 > psize:
            raise Damage(f"{what}: page {pgno} has a node with flags {flags:#x}")
        out.append((flags, ksize, size, start))
    return out


def table_leaf(
    pgno: int, h: array[int], upper: int, psize: int, what: str
) -> tuple[int, list[tuple[int, int]]]:
    """:func:`leaf_nodes` for a table's leaf page (nodes with flags 0 or ``F_BIGDATA``),
    as fast as it goes: the hot loop of opening a store.  Returns the number of nodes and
    ``(data offset, size)`` of those whose values are on overflow pages."""
    big = []
    offsets = h[8 : 8 + ((h[6] - PAGEHDRSZ) >> 1)]
    last = psize - NODESIZE
    for off in offsets:
        if off < upper or off > last or off & 1:
            break
        n = off >> 1
        ksize = h[n + 3]
        if not 0 < ksize <= MAX_KEY:
            break
        if h[n + 2]:
            if h[n + 2] != F_BIGDATA or off + 16 + ksize > psize:
                break
            big.append((off + NODESIZE + ksize, h[n] | h[n + 1] << 16))
        elif off + NODESIZE + ksize + (h[n] | h[n + 1] << 16) > psize:
            break
    else:
        return len(offsets), big
    leaf_nodes(pgno, h, offsets, upper, psize, what, F_BIGDATA)  # says what is wrong
    raise AssertionError("leaf_nodes found no fault where table_leaf found one")


def node_offsets(h: array[int]) -> array[int]:
    return h[8 : 8 + ((h[6] - PAGEHDRSZ) >> 1)]


def table_entry(page: bytes, ksize: int, flags: int, size: int, start: int) -> tuple[str, Tree]:
    """A main-tree node: the table's name and its tree."""
    name = page[start - ksize : start].decode("utf-8", "replace")
    if flags != F_SUBDATA or size != _DB.size:
        raise Damage(f"the main tree: entry {name!r} is not a table")
    return name, Tree(*_DB.unpack_from(page, start))


def free_list(w: Walk, page: bytes, ksize: int, flags: int, size: int, start: int) -> list[int]:
    """The page numbers of one free-list record, checked (its overflow run, if it has
    one, was checked already)."""
    what = "the free-page tree"
    if ksize != 8:
        raise Damage(f"{what}: a {ksize}-byte key")
    data = w.value(page, flags, start, size)
    count = U64.unpack_from(data)[0] if len(data) >= 8 else -1
    if len(data) != size or size != 8 * (count + 1):
        raise Damage(f"{what}: a free list of {size} bytes says it holds {count} pages")
    pages = struct.unpack_from(f"<{count}Q", data, 8)
    if pages and not 2 <= min(pages) <= max(pages) <= w.meta.last_pg:
        raise Damage(f"{what}: lists page {max(pages)} or {min(pages)}, out of range")
    return list(pages)
