"""Is a store whole?  The checks :class:`~nbqup.store.Store` makes as it opens one.

LMDB trusts its data file, so a damaged one could kill the process (see
:mod:`nbqup.lmdbcheck`); and LMDB takes an empty or missing data file for a new store,
so ``truncate -s 0 data.mdb`` would silently lose every job.  Hence, on opening:

1. :func:`before_open`, before LMDB reads the file: an empty or missing data file is a
   new store only if nothing shows a store was there (:func:`existed`); otherwise the
   meta pages, the main tree and the free-page tree -- what opening reads, and what
   every write reads -- are checked.  No reader slot holds the snapshot yet, so a fault
   seen while another process commits is looked at again (see :func:`before_open`).
2. :func:`after_open`, once LMDB has the file open and before anything reads a table:
   every table of the snapshot a read transaction holds is walked.  This one costs
   time in proportion to the file (about 0.1 s for 100,000 jobs here).

Both are skipped on a big-endian machine, whose LMDB files :mod:`nbqup.lmdbfile` does
not read.

Evidence that a store existed
-----------------------------
A store's directory keeps two files beside the data: ``store.json`` (:data:`MARK`),
written once the store's format is recorded (and added to older stores when they are
opened), and ``owner.json``, written by every process that ran its workers (after the
format was recorded too).  Either one means the data file held a store: found empty or
missing, or without its format record, it is damaged, not new.  Tables that hold
records without a format record mean the same.  A directory with neither file and
empty tables is a new store (or one whose creation was cut short: nothing was in it).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

from .errors import NbqupError, StoreCorrupt
from .lmdbbackend import LMDBBackend
from .lmdbcheck import check
from .lmdbfile import SUPPORTED, Damage, DataFile, Meta, check_meta, read_metas

__all__ = ["MARK", "after_open", "before_open", "existed", "format_number", "mark"]

#: The file whose presence says the directory holds a store (see the module's doc).
MARK = "store.json"
DATA = Path("lmdb", "data.mdb")
_LOOKS = 20  # how often a fault seen under a committing writer is looked at again


def damaged(path: Path | None, reason: str) -> StoreCorrupt:
    """The error for a store damaged as a whole (it says to run ``nbqup salvage``)."""
    return StoreCorrupt(None, reason, None if path is None else str(path))


def existed(path: Path | None) -> str | None:
    """Why the directory ``path`` must have held a store (its files), or None."""
    if path is not None:
        for name in (MARK, "owner.json"):
            if (path / name).exists():
                return f"{name} shows it held one"
    return None


def mark(path: Path) -> None:
    """Leave :data:`MARK` in ``path`` if it is not there (best effort: a read-only
    directory keeps none, and the store still opens)."""
    target = path / MARK
    if target.exists():
        return
    tmp = path / f"{MARK}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump({"created": time.time()}, fh)
        os.replace(tmp, target)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()


def format_number(raw: bytes, path: Path | None) -> int:
    """The store format a stored ``info/format`` value names; :class:`StoreCorrupt` if it
    names none."""
    if raw.isdigit() and int(raw) >= 1:
        return int(raw)
    shown = raw[:40].decode("ascii", "backslashreplace")
    raise damaged(path, f"its format record (info/format) holds {shown!r}, not a format number")


def not_new(path: Path | None, held: dict[str, int]) -> str | None:
    """Why a store without a format record is not new (``held``: its non-empty tables and
    their sizes), or None."""
    if held:
        jobs = held.get("meta", 0)
        what = f"{jobs} job record{'' if jobs == 1 else 's'}" if jobs else "records"
        return f"it holds {what} (in tables {', '.join(sorted(held))})"
    return existed(path)


def before_open(path: Path) -> None:
    """Check what LMDB reads as it opens the store in ``path`` (see the module's doc);
    raises :class:`StoreCorrupt`.

    This reads the newest snapshot without a reader slot, so a writer in another process
    may commit meanwhile (and then reuse pages of older snapshots): a fault counts only
    if the meta pages did not change while it was found; else the file is looked at
    again.  A writer that commits during every look is using the store as it is, and
    :func:`after_open` walks it all under a read transaction.
    """
    data = path / DATA
    # The evidence is read before the file: another process creating this store writes
    # it only once the file holds the format record, so evidence seen first and a blank
    # file seen after is damage, not a creation racing this look.
    why = existed(path)
    try:
        size = data.stat().st_size
    except FileNotFoundError:
        size = None
    except OSError as exc:
        raise _unopenable(path, exc) from exc
    if not size:
        if why is not None:
            state = "missing" if size is None else "empty"
            raise damaged(path, f"its data file {DATA} is {state}, yet {why}")
        return  # a new store
    if not SUPPORTED:
        return
    try:
        _look(path, new=why is None)
    except OSError as exc:
        raise _unopenable(path, exc) from exc


def _unopenable(path: Path, exc: OSError) -> NbqupError:
    """The error LMDB's own failure to open the file gives (see lmdbenv._open_env)."""
    return NbqupError(f"cannot open store {path / DATA.parent}: {exc}")


def _look(path: Path, *, new: bool) -> None:
    """:func:`before_open`'s looks at an existing data file (``new``: no evidence that
    the store existed was there before the file was looked at)."""
    data = path / DATA
    for _ in range(_LOOKS):
        with DataFile(data) as f:
            if _blank(f) and new:
                return  # being created by another process: LMDB waits for it
            metas = read_metas(f)
            try:
                check(f, check_meta(f), tables=False)
                return
            except Damage as exc:
                if read_metas(f) == metas:  # no commit meanwhile: the file is like that
                    raise damaged(path, f"{DATA}: {exc}") from None


def _blank(f: DataFile) -> bool:
    """Are the meta pages unwritten (zeros, or past the end of the file)?"""
    return not f.read(0, 2 * 4096).strip(b"\0")


def after_open(path: Path, backend: LMDBBackend) -> None:
    """Walk every table of the snapshot a read transaction of ``backend`` holds (its
    pages cannot be reused meanwhile); raises :class:`StoreCorrupt`."""

    def walk(txnid: int) -> bool:
        with DataFile(path / DATA) as f:
            metas = read_metas(f)  # at once: its slot is rewritten two commits later
            meta = next((m for m in metas if isinstance(m, Meta) and m.txnid == txnid), None)
            if meta is None or read_metas(f)[meta.slot] != meta:  # rewritten, or being so
                return False
            check(f, meta)  # the pages of that snapshot stay as they are: it is held
            return True

    if not SUPPORTED:
        return
    try:
        for _ in range(_LOOKS):
            if backend.snapshot(walk):
                return
    except Damage as exc:
        raise damaged(path, f"{DATA}: {exc}") from None
    except OSError as exc:
        raise _unopenable(path, exc) from exc
