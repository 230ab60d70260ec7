"""What rank 0 tells the other ranks of its instance before each step: who joins the batch, who leaves.

Sent over the instance's MLX distributed group (control of the data plane, a few hundred bytes), so every
rank's engine takes the same decisions in the same step.

Posted one cycle ahead. Each cycle every rank first takes the control posted in the previous cycle, then
posts the next one (a transfer queued without waiting), then queues its model step. On MLX's stream the
next control's transfer therefore sits BEFORE this step's work: taking it next cycle does not wait for the
step, so mlx-lm's look-ahead keeps working (the next step's graph is built while this one computes), as it
does on one node. Waiting for the control after the step instead cost every token the graph building
time (~3 ms of ~50 here). The price: a request admitted while the batch runs joins one step later.

Wire format: a fixed block of `BLOCK_BYTES` uint8, passed from rank to rank down the chain (see
ControlChannel): a 4-byte little-endian length, then the msgpack payload. A payload too long for the
block (a long prompt) follows in one more transfer of the exact remaining size, which every rank queues
when it takes the block (so in the same place of its stream as its neighbours).
"""

from __future__ import annotations

from typing import Any

import msgspec
import numpy as np

from shared.generation import SamplingParams, Speculation

BLOCK_BYTES = 8192
HEADER_BYTES = 4
INLINE_BYTES = BLOCK_BYTES - HEADER_BYTES


class Submit(msgspec.Struct, frozen=True):
    request_id: str
    prompt: list[int]
    sampling: SamplingParams
    json_schema: str | None = None  # the grammar the output must match: each rank compiles its own matcher
    speculative: Speculation | None = None


class Control(msgspec.Struct, frozen=True):
    submits: list[Submit] = []
    cancels: list[str] = []
    shutdown: bool = False

    @property
    def empty(self) -> bool:
        return not (self.submits or self.cancels or self.shutdown)


def encode_block(control: Control | None) -> tuple[np.ndarray, bytes]:
    """(the fixed block rank 0 sends, the payload bytes that did not fit in it). Other ranks pass None:
    a block of zeros, the shape of what they receive."""
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
    0 posts real controls, the others post None. The first `post` comes before the first `take`.

    The block travels down the chain of ranks, rank 0 -> 1 -> ... -> N-1 (each rank receives it from the
    previous one and sends it on), the same way as a pipeline's activations: rank 0 never waits for the
    others to take a control, so its next step starts as soon as its own sampling is done. (An all_sum, as
    before, waited for the slowest rank's sampling and crossed the ring twice: ~1.7 ms per token on 3 ranks
    here.) The model's own collectives still keep every rank within one step of the others.
    """

    def __init__(self, group) -> None:  # noqa: ANN001 - mx.distributed.Group
        self.group = group
        self.rank, self.size = group.rank(), group.size()
        self._pending: tuple[Control | None, bytes, Any] | None = None  # (the control posted (rank 0), its overflow bytes (rank 0), the queued transfer)
        self.posted_work = False  # rank 0: the control in flight admits, cancels or stops something

    def _pass_on(self, data):  # mx.array in, mx.array out
        """On MLX's generation stream: receive `data`'s shape from the previous rank (rank 0: send its own),
        then send it to the next rank. Returns what arrived (rank 0: the send)."""
        import mlx.core as mx
        from mlx_lm.generate import generation_stream

        # The stream mlx-lm generates on, so these transfers keep their order against the model's own
        # transfers and collectives on every rank (on another stream they could pair with a peer's model
        # traffic: seen as garbage sizes).
        if self.rank > 0:
            data = mx.distributed.recv_like(data, self.rank - 1, group=self.group, stream=generation_stream)
        if self.rank == self.size - 1:
            return data
        sent = mx.distributed.send(data, self.rank + 1, group=self.group, stream=generation_stream)
        return sent if self.rank == 0 else mx.depends(data, sent)

    def post(self, control: Control | None) -> None:
        """Queue the next cycle's control on MLX's generation stream without waiting for it."""
        import mlx.core as mx

        block, overflow = encode_block(control)
        moved = self._pass_on(mx.array(block))
        mx.async_eval(moved)
        self._pending = (control, overflow, moved)
        self.posted_work = control is not None and not control.empty

    def take(self) -> Control:
        """The control posted last (waits only for its block, and for an overflow when there is one)."""
        import mlx.core as mx

        assert self._pending is not None, "take() before post()"
        control, overflow, moved = self._pending
        self._pending = None
        if self.rank == 0:
            # Its send sits right after the step that was waited for last cycle: this does not wait for
            # the step in flight, only keeps rank 0 from running more than a cycle ahead of its sends.
            mx.eval(moved)
            if overflow:  # the others ask for it now, in this same place of their stream
                mx.eval(self._pass_on(mx.array(np.frombuffer(overflow, dtype=np.uint8))))
            return control if control is not None else Control()
        length, payload = decode_block(np.array(moved))
        if length > INLINE_BYTES:
            payload += np.array(self._pass_on(mx.zeros(length - INLINE_BYTES, dtype=mx.uint8))).tobytes()
        return msgspec.msgpack.decode(payload, type=Control) if length else Control()
