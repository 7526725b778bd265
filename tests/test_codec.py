"""The codec (nbqup.codec): framing, checksum and compression of stored values."""

from __future__ import annotations

import os

import pytest

from nbqup.codec import COMPRESS_ABOVE, decode, encode


@pytest.mark.parametrize(
    "body",
    [b"", b"x", b"small record", bytes(range(256)), b"a" * COMPRESS_ABOVE],
    ids=["empty", "one", "small", "all-bytes", "at-threshold"],
)
def test_small_bodies_are_stored_raw(body: bytes) -> None:
    data = encode(body)
    assert data[0] == 1  # format
    assert data[1] == 0  # codec: raw
    assert data.endswith(body)
    assert len(data) == len(body) + 6
    assert decode(data) == body


def test_large_bodies_are_compressed() -> None:
    body = b"compressible " * 1000
    assert len(body) > COMPRESS_ABOVE
    data = encode(body)
    assert data[1] == 1  # codec: zlib
    assert len(data) < len(body) // 10
    assert decode(data) == body


def test_large_incompressible_bodies_stay_raw() -> None:
    body = os.urandom(COMPRESS_ABOVE * 2)
    data = encode(body)
    assert data[1] == 0
    assert decode(data) == body


def test_decode_rejects_damage() -> None:
    with pytest.raises(ValueError, match="truncated"):
        decode(b"\x01\x00")
    with pytest.raises(ValueError, match="format"):
        decode(bytes([9]) + encode(b"x")[1:])
    with pytest.raises(ValueError, match="checksum"):
        decode(encode(b"hello") + b"!")
