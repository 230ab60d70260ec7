"""The control block rank 0 all-sums to the other ranks before each step: services/worker/runner/serve/control.py.
Over a real MLX group (two ranks, a prompt too long for the block): tests/integration/test_ring_ranks.py."""

from __future__ import annotations

import msgspec
import numpy as np

from services.worker.runner.serve.control import (
    BLOCK_BYTES,
    INLINE_BYTES,
    Control,
    Submit,
    decode_block,
    encode_block,
)
from shared.generation import SamplingParams


def summed(*blocks: np.ndarray) -> np.ndarray:
    """What all_sum gives every rank (uint8, only rank 0 writes)."""
    return np.sum(np.stack(blocks).astype(np.int64), axis=0).astype(np.uint8)


def test_a_short_control_fits_in_the_block():
    control = Control([Submit("r1", [1, 2, 3], SamplingParams(max_tokens=5, seed=7))], ["r0"])
    block, overflow = encode_block(control)
    assert block.shape == (BLOCK_BYTES,) and block.dtype == np.uint8 and overflow == b""
    follower, nothing = encode_block(None)
    assert not follower.any() and nothing == b""
    length, payload = decode_block(summed(block, follower, follower))
    assert length == len(payload)
    assert msgspec.msgpack.decode(payload, type=Control) == control


def test_a_long_prompt_overflows_and_the_parts_join():
    control = Control([Submit("long", list(range(40_000, 44_000)), SamplingParams(max_tokens=5))])
    whole = msgspec.msgpack.encode(control)
    assert len(whole) > INLINE_BYTES
    block, overflow = encode_block(control)
    length, inline = decode_block(summed(block, encode_block(None)[0]))
    assert length == len(whole) and len(inline) == INLINE_BYTES
    assert msgspec.msgpack.decode(inline + overflow, type=Control) == control


def test_no_control_reads_as_empty():
    assert decode_block(np.zeros(BLOCK_BYTES, np.uint8)) == (0, b"")
    assert Control().empty and not Control(shutdown=True).empty and not Control(cancels=["x"]).empty
