"""The format number of a store as a whole: recorded when it is made, checked as it opens.

A store written by a newer nbqup is refused with a message saying so; an older one is
read as it is and marked with the current number, so that the older nbqup refuses it
from then on.  A store that lost its format record but shows it is not new is damaged
(:mod:`nbqup.integrity`), not made again.
"""

from __future__ import annotations

from pathlib import Path

from . import integrity
from .backends import TABLES, Backend, Txn
from .counts import _COUNTS, _COUNTS_FORMAT
from .errors import NbqupError
from .leaf import LMDBTable

__all__ = ["STORE_FORMAT", "check"]

#: Format of the store as a whole; a store written by a newer format is refused.
#: 2: job records are stored as a tuple of values (:meth:`JobRecord.to_values`) instead
#: of a dict of fields; format-1 stores open (their records read as before) and are
#: marked 2, so that an nbqup that only knows format 1 refuses them.
STORE_FORMAT = 2


def check(path: Path | None, backend: Backend, info: LMDBTable) -> None:
    """Record the format of a new store; refuse one of a newer format, or one that
    shows it is not new but lost its format record (see :mod:`nbqup.integrity`)."""
    raw = info.get_raw("format")
    if raw is None:  # decided in one write transaction: another process may be creating it
        raw, why = backend.transact(lambda txn: _create(txn, path))
        if why is not None:
            raise integrity.damaged(path, f"its format record (info/format) is missing, yet {why}")
    if raw is not None:
        found = integrity.format_number(raw, path)
        if found > STORE_FORMAT:
            raise NbqupError(
                f"store {path} has format {found}, newer than this nbqup "
                f"understands ({STORE_FORMAT}); upgrade nbqup to open it"
            )
        if found < STORE_FORMAT:  # records of both forms read; new ones are written as 2
            info["format"] = str(STORE_FORMAT).encode()
    if path is not None:
        integrity.mark(path)


def _create(txn: Txn, path: Path | None) -> tuple[bytes | None, str | None]:
    """Record a new store's format: nothing finished.  Returns the format record another
    process wrote first, or why the store is not new (it lost its format record), or
    ``(None, None)`` once it is created."""
    raw = txn.get("info", "format")
    if raw is not None:
        return raw, None
    held = {t: n for t in TABLES if (n := sum(1 for _ in txn.values(t)))}
    why = integrity.not_new(path, held)
    if why is not None:
        return None, why
    txn.put("info", "format", str(STORE_FORMAT).encode())
    txn.put("info", _COUNTS, _COUNTS_FORMAT.pack(0, 0, 0, 0))
    return None, None
