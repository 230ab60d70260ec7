"""Splitting a request too large for one bus message (services/gateway/uploads.py); the whole path, through a
real node's bus, is in tests/integration/test_openai_api.py."""

from __future__ import annotations

from services.gateway.uploads import HEADROOM_BYTES, split

MB = 1024 * 1024


def test_a_request_that_fits_goes_in_one_message():
    assert split(b"x" * 1000, MB) is None
    assert split(b"x" * (MB - HEADROOM_BYTES), MB) is None


def test_a_larger_one_goes_in_pieces_that_each_fit_and_join_to_it():
    payload = bytes(range(256)) * (5 * MB // 256 + 7)
    pieces = split(payload, MB)
    assert pieces is not None and len(pieces) == 6
    assert all(0 < len(p) <= MB - HEADROOM_BYTES for p in pieces)
    assert b"".join(pieces) == payload


def test_one_byte_over_makes_two_pieces():
    pieces = split(b"y" * (MB - HEADROOM_BYTES + 1), MB)
    assert pieces is not None and [len(p) for p in pieces] == [MB - HEADROOM_BYTES, 1]
