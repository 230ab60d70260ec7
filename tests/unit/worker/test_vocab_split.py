"""The vocabulary-split head: every rank's slice, padded to one height, joins back into the whole head's
logits (the all_gather itself runs in tests/integration/test_sharding.py over real ranks)."""

import itertools

import mlx.core as mx
import mlx.nn as nn
import pytest

from services.worker.runner.model.vocab_split import join_parts, part_logits, vocab_part, vocab_rows


@pytest.mark.parametrize("vocab, size", [(12, 3), (10, 3), (10, 4), (7, 1), (49152, 3)])
def test_rows_tile_the_vocabulary_with_one_height(vocab, size):
    spans = [vocab_rows(vocab, r, size) for r in range(size)]
    assert spans[0][0] == 0 and spans[-1][1] == vocab
    assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))
    per = {s[2] for s in spans}
    assert len(per) == 1 and per.pop() * size >= vocab


def test_a_rank_outside_the_group_is_an_error():
    with pytest.raises(ValueError, match="rank 3 is not in a group of 3"):
        vocab_rows(10, 3, 3)


def _whole_and_parts(head: nn.Module, vocab: int, size: int, h: mx.array) -> tuple[mx.array, mx.array]:
    whole = part_logits(head, h)
    parts = [part_logits(vocab_part(head, r, size, vocab), h) for r in range(size)]
    gathered = mx.stack([p.reshape(-1, p.shape[-1]) for p in parts])  # what all_gather hands every rank
    return whole, join_parts(gathered, h.shape[:-1], vocab)


@pytest.mark.parametrize("vocab", [12, 10])  # 10 over 3 ranks: the last slice is padded
def test_tied_embedding_slices_join_into_the_whole_logits(vocab):
    mx.random.seed(0)
    head = nn.Embedding(vocab, 16)
    h = mx.random.normal((2, 3, 16))
    whole, joined = _whole_and_parts(head, vocab, 3, h)
    assert joined.shape == whole.shape == (2, 3, vocab)
    assert mx.allclose(joined, whole, atol=1e-5).item()


def test_linear_and_quantized_heads_slice_every_parameter():
    mx.random.seed(1)
    vocab = 10
    linear = nn.Linear(64, vocab, bias=True)
    h = mx.random.normal((1, 2, 64))
    whole, joined = _whole_and_parts(linear, vocab, 3, h)
    assert mx.allclose(joined, whole, atol=1e-5).item()
    quantized = nn.QuantizedEmbedding.from_embedding(nn.Embedding(vocab, 64), group_size=32, bits=4)
    whole, joined = _whole_and_parts(quantized, vocab, 3, h)
    assert mx.allclose(joined, whole, atol=1e-4).item()
    part = vocab_part(quantized, 2, 3, vocab)
    assert {k: v.shape[0] for k, v in part.parameters().items()} == {"weight": 4, "scales": 4, "biases": 4}


def _held_after_dropping_the_head(view: bool) -> int:
    """Bytes still allocated when only rank 1's slice of a 4096 x 256 float32 head (4 MiB) is kept."""
    mx.clear_cache()
    base = mx.get_active_memory()
    head = nn.Embedding(4096, 256)
    part = vocab_part(head, 1, 4, 4096, view=view)
    mx.eval(part.parameters())
    del head
    mx.clear_cache()
    held = mx.get_active_memory() - base
    del part
    return held


def test_a_copied_slice_frees_the_rest_of_the_matrix():
    whole = 4096 * 256 * 4
    assert _held_after_dropping_the_head(view=False) < 0.3 * whole  # its quarter
    assert _held_after_dropping_the_head(view=True) >= whole  # a view keeps the whole buffer alive


def test_a_head_whose_rows_are_not_the_vocabulary_is_refused():
    with pytest.raises(ValueError, match="not the vocabulary's 12"):
        vocab_part(nn.Linear(8, 10), 0, 2, 12)


def test_rows_read_from_disk_are_used_and_a_wrong_shape_falls_back_to_the_matrix():
    mx.random.seed(2)
    head = nn.Embedding(10, 8)
    asked = []

    def from_disk(name, start, end):
        asked.append((name, start, end))
        return head.weight[start:end] + 1  # distinguishable from the matrix's own rows

    part = vocab_part(head, 1, 3, 10, read=from_disk)
    assert asked == [("weight", 4, 8)]
    assert mx.array_equal(part.weight, head.weight[4:8] + 1).item()
    wrong = vocab_part(head, 1, 3, 10, read=lambda name, start, end: mx.zeros((3, 8)))
    assert mx.array_equal(wrong.weight, head.weight[4:8]).item()
