"""The store's codec: how a value is framed on disk, and the job record's stored form.

Each framed value is ``format version | codec | crc32 | body``, the CRC covering the
codec mark and the body; bodies over :data:`COMPRESS_ABOVE` bytes are zlib-compressed
when that makes them smaller (``zlib.compress`` costs about 30 us even on 100 bytes, more
than an LMDB write, so small values are not).  A job record is stored as the pickled
tuple of its fields' values in the append-only order of :data:`~nbqup.records.JOB_FIELDS`.
These functions are the ``dump``/``load`` pair :class:`zict.Func` puts over each LMDB
table in :class:`~nbqup.store.Store`; a value that fails to decode raises
:class:`_Corrupt` (a ``ValueError``), to which the store adds the key.
"""

from __future__ import annotations

import operator
import pickle
import struct
import zlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from .records import _JOB_DEFAULTS, _REQUIRED, JOB_FIELDS, JobRecord, Status

__all__ = ["COMPRESS_ABOVE", "RAW_TABLES", "decode", "encode"]

#: Tables of tiny values (ids, flags) stored as they are; every other value is framed.
RAW_TABLES = frozenset({"pending", "keys", "requests", "info", "cache", "groups"})

_HEADER = struct.Struct("<BBI")
_RECORD_FORMAT = 1
_RAW, _ZLIB = 0, 1
#: Bodies larger than this are compressed.
COMPRESS_ABOVE = 4096


class _Corrupt(ValueError):
    """A value failed to decode (the caller adds the key)."""


def encode(body: bytes) -> bytes:
    """Frame ``body`` with a format version, a codec mark and a CRC32.

    >>> decode(encode(b"hello")) == b"hello"
    True
    """
    if len(body) > COMPRESS_ABOVE:
        packed = zlib.compress(body, 1)
        if len(packed) < len(body):
            return _HEADER.pack(_RECORD_FORMAT, _ZLIB, _crc(_ZLIB, packed)) + packed
    return _HEADER.pack(_RECORD_FORMAT, _RAW, _crc(_RAW, body)) + body


def decode(data: bytes) -> bytes:
    """Check and unframe a value written by :func:`encode`; raise ``ValueError`` if bad."""
    body = _unframe(data)
    return body if type(body) is bytes else bytes(body)


def _unframe(data: bytes) -> bytes | memoryview:
    """:func:`decode` without copying an uncompressed body out of ``data``."""
    if len(data) < _HEADER.size:
        raise _Corrupt(f"truncated record ({len(data)} bytes)")
    fmt, codec, crc = _HEADER.unpack_from(data)
    body = memoryview(data)[_HEADER.size :]
    if fmt != _RECORD_FORMAT:
        raise _Corrupt(f"unknown record format {fmt}")
    if _crc(codec, body) != crc:
        raise _Corrupt("checksum mismatch")
    if codec == _RAW:
        return body
    if codec == _ZLIB:
        try:
            return zlib.decompress(body)
        except zlib.error as exc:
            raise _Corrupt(f"cannot decompress: {exc}") from None
    raise _Corrupt(f"unknown codec {codec}")


def _crc(codec: int, body: bytes | memoryview) -> int:
    """CRC32 of the codec mark and the body: a flipped codec byte fails the check too."""
    seed = _CRC_OF_CODEC[codec] if codec < len(_CRC_OF_CODEC) else zlib.crc32(bytes((codec,)))
    return zlib.crc32(body, seed)


_CRC_OF_CODEC = tuple(zlib.crc32(bytes((codec,))) for codec in (_RAW, _ZLIB))


def _dump_record(rec: JobRecord) -> bytes:
    return encode(pickle.dumps(rec.to_values(), protocol=5))


def _load_record(data: bytes) -> JobRecord:
    try:
        values = pickle.loads(_unframe(data))
        if type(values) is tuple:
            return JobRecord.from_values(values)
        if type(values) is dict:  # written by nbqup before store format 2
            return JobRecord.from_dict(values)
        raise TypeError(f"a {type(values).__name__}, not a tuple of values")
    except _Corrupt:
        raise
    except Exception as exc:  # a record that unframes but does not make sense
        raise _Corrupt(f"undecodable job record: {exc!r}") from exc


def _stored_status(raw: bytes) -> str | None:
    """The status a stored record holds, or None if it cannot be read."""
    try:
        values = pickle.loads(_unframe(raw))
    except Exception:
        return None
    if type(values) is tuple and len(values) > _STATUS_AT:
        return str(values[_STATUS_AT])
    if type(values) is dict:
        return str(values.get("status", Status.QUEUED.value))
    return None


#: Where each field sits in a stored record's tuple of values.
_FIELD_AT = {name: i for i, name in enumerate(JOB_FIELDS)}
_STATUS_AT = JOB_FIELDS.index("status")
_REQUIRED_FIELDS = sum(1 for d in _JOB_DEFAULTS.values() if d is _REQUIRED)
#: A field's default as a stored value reads (statuses as strings; shared: read only).
_DEFAULT_VALUES = tuple(
    None if d is _REQUIRED else getattr(d, "value", d) for d in _JOB_DEFAULTS.values()
)


def stored_rows(
    items: Iterable[tuple[str, bytes]], fields: Sequence[str]
) -> Iterator[tuple[str, tuple[Any, ...]]]:
    """``(job id, values of fields)`` of each readable stored job record in ``items``
    (``(job id, stored value)``), without building a :class:`JobRecord` for each (which
    costs more than the rest of ``jobs_df``); damaged records are skipped."""
    if len(fields) < 2:
        raise ValueError("stored_rows needs at least two fields")
    pick = operator.itemgetter(*(_FIELD_AT[f] for f in fields))
    defaults = tuple(_DEFAULT_VALUES[_FIELD_AT[f]] for f in fields)
    complete = len(JOB_FIELDS)
    for key, raw in items:
        try:
            values = pickle.loads(_unframe(raw))
        except Exception:
            continue
        if type(values) is tuple and len(values) >= complete:
            yield key, pick(values)
        elif type(values) is tuple and len(values) >= _REQUIRED_FIELDS:  # older, shorter
            yield key, pick(values + _DEFAULT_VALUES[len(values) :])
        elif type(values) is dict and "name" in values and "created" in values:
            yield key, tuple(map(values.get, fields, defaults))
