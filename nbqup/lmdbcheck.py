"""A read-only check of an LMDB data file's structure, in pure Python.

Why
---
LMDB trusts its file.  A flipped bit in a page header or a node makes its C code follow a
wild page number or size: it reads out of bounds (SIGSEGV) or fails an assertion
(SIGABRT: ``mdb.c: Assertion 'IS_LEAF(mp)' failed`` inside ``jobs_df()``), and the
notebook kernel dies with it.  So before nbqup lets LMDB read a store, :func:`check` walks
every B-tree of the snapshot LMDB will use and checks what LMDB relies on: page numbers,
page kinds, free-space bounds, node offsets, flags and sizes, overflow runs, tree depths,
the per-table counts, and the free-page lists (LMDB writes to the pages they name).  A
file that passes cannot make LMDB read or write outside its pages.  Key bytes and values
are not judged here: a damaged value fails its own checksum in :mod:`nbqup.store`.
:func:`read_tolerant` is the same walk for :mod:`nbqup.salvage`: it skips what is damaged
and says what it skipped.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field

from .lmdbfile import (
    F_BIGDATA,
    F_SUBDATA,
    FREE_FLAGS,
    Damage,
    DataFile,
    Meta,
    NodeFn,
    Tree,
    Walk,
    check_root,
    free_list,
    leaf_nodes,
    node_offsets,
    table_entry,
    table_leaf,
)

__all__ = ["Tolerant", "check", "read_tolerant"]


def _counts(what: str, found: tuple[int, ...], tree: Tree) -> None:
    recorded = (tree.branch_pages, tree.leaf_pages, tree.overflow_pages, tree.entries)
    if found != recorded:
        raise Damage(
            f"{what}: found {found[0]} branch, {found[1]} leaf and {found[2]} overflow pages "
            f"and {found[3]} entries, where it records {recorded[0]}, {recorded[1]}, "
            f"{recorded[2]} and {recorded[3]}"
        )


def check(
    f: DataFile, meta: Meta, *, tables: bool = True, kinds: dict[int, str] | None = None
) -> dict[str, Tree]:
    """Check the snapshot ``meta`` describes: its free-page tree and lists, its main tree
    and (``tables``) every table it names, which it returns.  Raises :class:`Damage` at
    the first fault.  The snapshot's pages must not change meanwhile: hold a read
    transaction on it, or make sure no writer can have reused them.

    ``kinds``, if given, is filled with what each page reached is (``"table 'meta':
    leaf"``), to find one's way in a file.
    """
    w = Walk(f, meta, kinds=kinds)
    psize = meta.psize
    free: list[int] = []
    named: dict[str, Tree] = {}

    def walk(tree: Tree, what: str, allowed: int, node: NodeFn | None) -> None:
        entries = overflow = 0

        def leaf(pgno: int, page: bytes, h: array[int], upper: int) -> None:
            nonlocal entries, overflow
            if node is None:  # a table's leaf: only sizes and overflow runs matter
                count, big = table_leaf(pgno, h, upper, psize, what)
                entries += count
                for start, size in big:
                    overflow += w.overflow(page, start, size, what)
                return
            nodes = leaf_nodes(pgno, h, node_offsets(h), upper, psize, what, allowed)
            entries += len(nodes)
            for flags, ksize, size, start in nodes:
                if flags & F_BIGDATA:
                    overflow += w.overflow(page, start, size, what)
                node(page, ksize, flags, size, start)

        _counts(what, (*w.tree(tree, what, leaf), overflow, entries), tree)

    def free_node(page: bytes, ksize: int, flags: int, size: int, start: int) -> None:
        free.extend(free_list(w, page, ksize, flags, size, start))

    def main_node(page: bytes, ksize: int, flags: int, size: int, start: int) -> None:
        name, tree = table_entry(page, ksize, flags, size, start)
        check_root(tree, meta, f"table {name!r}", 0)
        named[name] = tree

    check_root(meta.free, meta, "the free-page tree", FREE_FLAGS)
    check_root(meta.main, meta, "the main tree", 0)
    walk(meta.free, "the free-page tree", F_BIGDATA, free_node)
    walk(meta.main, "the main tree", F_SUBDATA, main_node)
    if tables:
        for name, tree in named.items():
            walk(tree, f"table {name!r}", F_BIGDATA, None)
    for pgno in free:
        if w.seen[pgno]:
            raise Damage(f"page {pgno} is listed as free, yet in use (or free twice)")
        w.seen[pgno] = 1
    return named


# --------------------------------------------------------------------- tolerant reading


@dataclass
class Tolerant:
    """What :func:`read_tolerant` read of one snapshot."""

    meta: Meta
    #: table -> key -> value, of every record that still reads.
    tables: dict[str, dict[str, bytes]] = field(default_factory=dict)
    #: table -> how many entries its tree records (what a whole read would give).
    recorded: dict[str, int] = field(default_factory=dict)
    #: One line per fault: what was damaged and what was lost with it.
    faults: list[str] = field(default_factory=list)


def read_tolerant(f: DataFile, meta: Meta) -> Tolerant:
    """Every record of the snapshot ``meta`` describes that still reads: a damaged page
    loses what hangs under it, a damaged node only its own record, and each loss is a
    line in ``faults``.  Reads only what :func:`check` would have checked first, so it
    never reads outside the file whatever the damage."""
    out = Tolerant(meta)
    w = Walk(f, meta, out.faults)
    psize = meta.psize

    def read(tree: Tree, what: str, allowed: int) -> list[tuple[bytes, int, int, int, int]]:
        found = []

        def leaf(pgno: int, page: bytes, h: array[int], upper: int) -> None:
            for i, off in enumerate(node_offsets(h)):
                try:
                    ((flags, ksize, size, start),) = leaf_nodes(
                        pgno, h, (off,), upper, psize, what, allowed
                    )
                    if flags & F_BIGDATA:
                        w.overflow(page, start, size, what)
                except Damage as exc:
                    out.faults.append(f"{exc} (node {i}): its record is lost")
                    continue
                found.append((page, ksize, flags, size, start))

        w.tree(tree, what, leaf)
        return found

    named: dict[str, Tree] = {}
    try:
        check_root(meta.main, meta, "the main tree", 0)
    except Damage as exc:
        out.faults.append(f"{exc}: every table is lost")
        return out
    for page, ksize, flags, size, start in read(meta.main, "the main tree", F_SUBDATA):
        try:
            name, tree = table_entry(page, ksize, flags, size, start)
            check_root(tree, meta, f"table {name!r}", 0)
        except Damage as exc:
            out.faults.append(f"{exc}: that table is lost")
            continue
        named[name] = tree
    for name, tree in named.items():
        what = f"table {name!r}"
        records = out.tables[name] = {}
        out.recorded[name] = tree.entries
        for page, ksize, flags, size, start in read(tree, what, F_BIGDATA):
            try:
                key = page[start - ksize : start].decode()
            except UnicodeDecodeError:
                out.faults.append(f"{what}: a key that is not text: its record is lost")
                continue
            value = w.value(page, flags, start, size)
            if len(value) != size:
                out.faults.append(f"{what}: record {key!r} lies past the end of the file")
                continue
            records[key] = value
    return out
