"""What rank 0 tells the other ranks of its instance before each step: who joins the batch, who leaves.

Sent over the instance's MLX distributed group (control of the data plane, a few hundred bytes), so every
rank's engine takes the same decisions in the same step.

Posted one cycle ahead. Each cycle every rank first takes the control posted in the previous cycle, then
posts the next one (an all_sum queued without waiting), then queues its model step. On MLX's stream the
next control's all_sum therefore sits BEFORE this step's work: taking it next cycle does not wait for the
step, so mlx-lm's look-ahead keeps working (the next step's graph is built while this one computes), as it
does on one node. Waiting for the control after the step instead cost every token the graph building
time (~3 ms of ~50 here). The price: a request admitted while the batch runs joins one step later.

Wire format: a fixed block of `BLOCK_BYTES` uint8, all-summed (only rank 0 writes, the others add
zeros): a 4-byte little-endian length, then the msgpack payload. A payload too long for the block (a
long prompt) goes on in one more all_sum of the exact remaining size, taken synchronously by every rank.
"""

from __future__ import annotations

import msgspec
import numpy as np

from shared.generation import SamplingParams

BLOCK_BYTES = 8192
HEADER_BYTES = 4
INLINE_BYTES = BLOCK_BYTES - HEADER_BYTES


class Submit(msgspec.Struct, frozen=True):
    request_id: str
    prompt: list[int]
    sampling: SamplingParams


class Control(msgspec.Struct, frozen=True):
    submits: list[Submit] = []
    cancels: list[str] = []
    shutdown: bool = False

    @property
    def empty(self) -> bool:
        return not (self.submits or self.cancels or self.shutdown)


def encode_block(control: Control | None) -> tuple[np.ndarray, bytes]:
    """(the fixed block rank 0 contributes, the payload bytes that did not fit in it). Other ranks pass
    None and contribute zeros."""
    block = np.zeros(BLOCK_BYTES, dtype=np.uint8)
    if control is None:
        return block, b""
    payload = msgspec.msgpack.encode(control)
    block[:HEADER_BYTES] = np.frombuffer(len(payload).to_bytes(HEADER_BYTES, "little"), dtype=np.uint8)
    inline = payload[:INLINE_BYTES]
    block[HEADER_BYTES : HEADER_BYTES + len(inline)] = np.frombuffer(inline, dtype=np.uint8)
    return block, payload[INLINE_BYTES:]


def decode_block(block: np.ndarray) -> tuple[int, bytes]:
    """(the whole payload's length, the part of it inside the block)."""
    length = int.from_bytes(block[:HEADER_BYTES].tobytes(), "little")
    return length, block[HEADER_BYTES : HEADER_BYTES + min(length, INLINE_BYTES)].tobytes()


class ControlChannel:
    """One per rank of a multi-rank instance. Every rank calls `post` then `take` in the same order: rank
    0 posts real controls, the others post None. The first `post` comes before the first `take`."""

    def __init__(self, group) -> None:  # noqa: ANN001 - mx.distributed.Group
        self.group = group
        self._pending = None  # (the queued all_sum, the overflow rank 0 still has to send)
        self.posted_work = False  # rank 0: the control in flight admits, cancels or stops something

    def post(self, control: Control | None) -> None:
        """Queue the next cycle's control on MLX's generation stream without waiting for it."""
        import mlx.core as mx
        from mlx_lm.generate import generation_stream

        # Our all_sums go on the stream mlx-lm generates on, so their order against the model's own
        # collectives is the same on every rank (on another stream a rank's control all_sum could pair
        # with a peer's model collective: seen as garbage sizes).
        block, overflow = encode_block(control)
        summed = mx.distributed.all_sum(mx.array(block), group=self.group, stream=generation_stream)
        mx.async_eval(summed)
        self._pending = (summed, overflow)
        self.posted_work = control is not None and not control.empty

    def take(self) -> Control:
        """The control posted last (waits only for its all_sum, and for an overflow when there is one)."""
        import mlx.core as mx
        from mlx_lm.generate import generation_stream

        assert self._pending is not None, "take() before post()"
        summed, overflow = self._pending
        self._pending = None
        length, payload = decode_block(np.array(summed))
        if length > INLINE_BYTES:
            rest = np.frombuffer(overflow, dtype=np.uint8) if overflow else np.zeros(length - INLINE_BYTES, np.uint8)
            more = mx.distributed.all_sum(mx.array(rest), group=self.group, stream=generation_stream)
            payload += np.array(more).tobytes()
        return msgspec.msgpack.decode(payload, type=Control) if length else Control()
