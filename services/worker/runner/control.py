"""What rank 0 tells the other ranks of its instance before each step: who joins the batch, who leaves.

Sent over the instance's MLX distributed group (control of the data plane, a few hundred bytes), so every
rank's engine takes the same decisions in the same step.
"""

from __future__ import annotations

import msgspec
import numpy as np

from shared.generation import SamplingParams


class Submit(msgspec.Struct, frozen=True):
    request_id: str
    prompt: list[int]
    sampling: SamplingParams


class Control(msgspec.Struct, frozen=True):
    submits: list[Submit] = []
    cancels: list[str] = []
    shutdown: bool = False


def broadcast(control: Control | None, group) -> Control:  # noqa: ANN001 - mx.distributed.Group
    """Rank 0 passes its control; the others pass None and get rank 0's (two small all_sums)."""
    import mlx.core as mx
    from mlx_lm.generate import generation_stream

    # mlx-lm leaves the next step's work (with its send/recv and all_gather) in flight on its generation
    # stream. Our all_sums go on that same stream, after it: on another stream a rank's control all_sum
    # could pair with a peer's model collective (seen: garbage sizes).
    stream = generation_stream
    payload = msgspec.msgpack.encode(control) if control is not None else b""
    size = mx.distributed.all_sum(mx.array([len(payload)], dtype=mx.int32), group=group, stream=stream).item()
    mine = np.frombuffer(payload, dtype=np.uint8).astype(np.int32) if payload else np.zeros(size, dtype=np.int32)
    summed = mx.distributed.all_sum(mx.array(mine), group=group, stream=stream)
    return msgspec.msgpack.decode(np.array(summed).astype(np.uint8).tobytes(), type=Control)
