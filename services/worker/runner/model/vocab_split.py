"""The output head split by vocabulary rows over the ranks of a group (a vocab-parallel head).

The head (the lm_head Linear, or the embedding used as the tied head) is the largest single matrix of a
small model: for SmolLM2 49152 x 576, as much compute per token as ~8 of its 30 layers. Run on one rank it
is a serial step every other rank waits for. Split, every rank computes the logits of its slice of the
vocabulary at the same time, and one all_gather hands every rank the whole logits row: the same values
(each logit is one row's dot product, computed once), so every rank still samples the same token.

Every rank's slice has the same shape, ceil(vocab / N) rows: the last one is padded with zero rows, and
the padded logits are cut off after the gather.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import mlx.core as mx
import mlx.nn as nn


def vocab_rows(vocab: int, rank: int, size: int) -> tuple[int, int, int]:
    """(start, end, rows per rank) of rank's slice of a vocabulary of `vocab` rows split over `size`."""
    if not 0 <= rank < size:
        raise ValueError(f"rank {rank} is not in a group of {size}")
    per = -(-vocab // size)
    start = min(rank * per, vocab)
    return start, min(start + per, vocab), per


# Reads rows [start, end) of one of the head's parameters ("weight", "scales", ...) from disk, or None.
RowReader = Callable[[str, int, int], "mx.array | None"]


def vocab_part(
    head: nn.Module, rank: int, size: int, vocab: int, view: bool = False, read: RowReader | None = None
) -> nn.Module:
    """A copy of `head` (Embedding, Linear, or their quantized twins: every parameter has the vocabulary
    as its first axis) holding only rank's rows, padded to the common slice height.

    The rows come from `read` when it can (only those bytes are read from disk; see safetensors_rows.py),
    else they are copied out of the lazily loaded matrix, which reads it whole for a moment (a plain slice
    would keep the whole buffer alive). With `view`, for a rank that keeps the whole matrix anyway (rank 0
    embeds the input with a tied head), the slice is a view of it."""
    start, end, per = vocab_rows(vocab, rank, size)
    part = copy.copy(head)
    rows = {}
    for name, value in head.parameters().items():
        if value.shape[0] != vocab:
            raise ValueError(f"head parameter {name} has {value.shape[0]} rows, not the vocabulary's {vocab}")
        mine = None if view or read is None else read(name, start, end)
        if mine is None or mine.shape != (end - start, *value.shape[1:]) or mine.dtype != value.dtype:
            mine = value[start:end] if view else mx.contiguous(value[start:end])
        if end - start < per:
            pad = mx.zeros((per - (end - start), *value.shape[1:]), dtype=value.dtype)
            mine = mx.concatenate([mine, pad], axis=0)
        rows[name] = mine
    part.update(rows)
    return part


def part_logits(part: nn.Module, h: mx.array) -> mx.array:
    """This rank's slice of the logits: an embedding is used as a linear layer, a Linear is called."""
    return part.as_linear(h) if hasattr(part, "as_linear") else part(h)


def gather_vocab(part: mx.array, group: mx.distributed.Group, vocab: int) -> mx.array:
    """Assemble every rank's (..., rows) slice into the whole (..., vocab) logits, on every rank."""
    size = group.size()
    if size == 1:
        return part[..., :vocab]
    gathered = mx.distributed.all_gather(part.reshape(1, -1, part.shape[-1]), group=group)
    return join_parts(gathered, part.shape[:-1], vocab)


def join_parts(gathered: mx.array, lead: tuple[int, ...], vocab: int) -> mx.array:
    """(size, positions, rows) slices, rank by rank, into (*lead, vocab) logits without the padding."""
    size, _, rows = gathered.shape
    return gathered.transpose(1, 0, 2).reshape(*lead, size * rows)[..., :vocab]


class SplitTiedEmbedding(nn.Module):
    """Stands in for a tied embedding under tensor parallelism: looks tokens up in the whole matrix (every
    rank embeds its input) and, used as the head (`as_linear`), computes this rank's vocabulary slice and
    gathers the rest. The slice is a view of the matrix, kept out of the parameters (not counted twice)."""

    UNCOUNTED_HEADS = ("_part",)  # for quantized_cpu.use_cpu_kernel: a head outside the parameters

    def __init__(self, embedding: nn.Module, group: mx.distributed.Group, vocab: int) -> None:
        super().__init__()
        self.embedding = embedding
        self.group, self.vocab = group, vocab
        object.__setattr__(self, "_part", vocab_part(embedding, group.rank(), group.size(), vocab, view=True))

    def __call__(self, tokens: mx.array) -> mx.array:
        return self.embedding(tokens)

    def as_linear(self, h: mx.array) -> mx.array:
        return gather_vocab(self._part.as_linear(h), self.group, self.vocab)


class SplitHead(nn.Module):
    """Stands in for an untied lm_head under tensor parallelism: holds only this rank's vocabulary rows."""

    def __init__(self, head: nn.Module, group: mx.distributed.Group, vocab: int, read: RowReader | None = None) -> None:
        super().__init__()
        self.part = vocab_part(head, group.rank(), group.size(), vocab, read=read)
        self.group, self.vocab = group, vocab

    def __call__(self, h: mx.array) -> mx.array:
        return gather_vocab(self.part(h), self.group, self.vocab)
