"""A draft model's proposals on every rank of a split main instance: rank 0 asks the draft instance over NATS
(only it serves the instance's requests), then one small all_sum over the instance's group gives every rank the
same drafts, or the same "none", so every rank verifies the same tokens in the same step and turns speculation
off at the same point. Every rank calls `share` at the same place of its step (they run the same steps on the
same tokens), on MLX's generation stream, behind the step's own transfers."""

from __future__ import annotations

import numpy as np

from services.worker.runner.serve.speculative import MAX_TOKENS

UNAVAILABLE = -1  # rank 0's count when its draft instance did not answer


def encode(proposed: list[int] | None, failure: str | None, k: int) -> np.ndarray:
    """Rank 0's block: [count, tokens..., 0...] (count -1: no draft); the other ranks add zeros."""
    block = np.zeros(MAX_TOKENS + 1, dtype=np.int32)
    if failure is not None or proposed is None:
        block[0] = UNAVAILABLE
    else:
        tokens = proposed[: min(k, MAX_TOKENS)]
        block[0] = len(tokens)
        block[1 : 1 + len(tokens)] = tokens
    return block


def decode(block: np.ndarray) -> list[int] | None:
    count = int(block[0])
    return None if count < 0 else [int(t) for t in block[1 : 1 + count]]


def share(group, proposed: list[int] | None, failure: str | None, k: int) -> list[int] | None:  # noqa: ANN001
    """Rank 0's drafts on every rank (None: it has none). Rank 0 passes what it was proposed (or why not); the
    other ranks pass None, None."""
    import mlx.core as mx
    from mlx_lm.generate import generation_stream

    rank0 = group.rank() == 0
    block = encode(proposed, failure, k) if rank0 else np.zeros(MAX_TOKENS + 1, dtype=np.int32)
    summed = mx.distributed.all_sum(mx.array(block), group=group, stream=generation_stream)
    mx.eval(summed)
    return decode(np.array(summed))
