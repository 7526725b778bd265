"""User strings as store keys: LMDB takes keys of 1 to 511 bytes of UTF-8 only.

A job's ``key=``, a schedule's key and the ids given to ``jq.get``, ``cancel`` and
``retry`` come from users, and any of them may be empty, long or not encodable.  Keys
that must be stored (idempotency keys) are stored under a hash when they do not fit
(:func:`stored_key`), so a 600-character key works like a short one; strings only looked
up (:func:`lookup_key`) that cannot be a stored key are simply not found.  The record
itself keeps the key as the user gave it.

>>> stored_key("train-lr0.1")
'train-lr0.1'
>>> stored_key("x" * 600)[:10], len(stored_key("x" * 600))
('h:5130b33e', 66)
"""

from __future__ import annotations

import hashlib
import re

__all__ = ["MAX_KEY_BYTES", "lookup_key", "show_key", "stored_key"]

#: The longest key LMDB stores (its default ``mdb_env_get_maxkeysize``).
MAX_KEY_BYTES = 511
_HASHED = re.compile(r"h:[0-9a-f]{64}")


def stored_key(key: str, max_bytes: int = MAX_KEY_BYTES) -> str:
    """``key`` itself when LMDB can store it (in ``max_bytes``: less when the key goes
    after a prefix); else ``"h:"`` and its SHA-256 in hex.

    A key that already looks like such a hash is hashed too, so two different keys never
    share an entry (short of a SHA-256 collision).  Raises ValueError for an empty key.
    """
    if not key:
        raise ValueError("a key must not be empty")
    raw = _encoded(key)
    if raw is not None and len(raw) <= max_bytes and not _HASHED.fullmatch(key):
        return key
    return "h:" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def lookup_key(text: str) -> str | None:
    """``text`` if it can be looked up as it is (1 to 511 bytes of UTF-8), else None: no
    stored id or raw key can equal it."""
    raw = _encoded(text)
    return text if raw is not None and 0 < len(raw) <= MAX_KEY_BYTES else None


def show_key(text: str) -> str:
    """``repr(text)`` for a message, cut short if long.

    >>> show_key("abc"), show_key("y" * 600)
    ("'abc'", "'yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy...' (600 characters)")
    """
    if len(text) <= 60:
        return repr(text)
    return f"{text[:40] + '...'!r} ({len(text)} characters)"


def _encoded(text: str) -> bytes | None:
    try:
        return text.encode()
    except UnicodeEncodeError:  # a lone surrogate (from os.fsdecode, say)
        return None
