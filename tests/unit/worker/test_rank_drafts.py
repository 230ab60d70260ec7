"""The block that carries rank 0's drafts to the other ranks of a split instance (rank_drafts.py), pure part: what
rank 0 encodes, summed with the others' zeros, decodes to its drafts or to "none"."""

from __future__ import annotations

import numpy as np

from services.worker.runner.serve.rank_drafts import decode, encode
from services.worker.runner.serve.speculative import MAX_TOKENS


def summed(*blocks: np.ndarray) -> np.ndarray:
    return np.sum(np.stack(blocks), axis=0)


def test_rank_0s_drafts_reach_every_rank_and_so_does_none():
    zeros = np.zeros(MAX_TOKENS + 1, dtype=np.int32)
    assert decode(summed(encode([5, 49151, 0, 7], None, 4), zeros, zeros)) == [5, 49151, 0, 7]
    assert decode(summed(encode([], None, 4), zeros)) == []  # the draft proposed nothing: a step with no draft
    assert decode(summed(encode(None, "no draft runner answers", 4), zeros)) is None
    assert decode(summed(encode([1, 2, 3], "timed out", 3), zeros)) is None  # a failure wins


def test_no_more_than_k_drafts_travel():
    assert decode(encode(list(range(1, 40)), None, 3)) == [1, 2, 3]
    assert decode(encode(list(range(1, 40)), None, 99)) == list(range(1, MAX_TOKENS + 1))
