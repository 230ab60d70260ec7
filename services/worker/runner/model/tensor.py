"""Tensor parallel: every rank holds every layer, cut by heads and by MLP columns, over `group`.

The cut itself is mlx-lm's `Model.shard(group)` where the family has one (llama, qwen2, deepseek_v3,
qwen3_moe): q/k/v/gate/up become all-to-sharded, o/down sharded-to-all; MoE blocks keep the router whole
and every rank holds a column slice of every expert (and of DeepSeek's shared expert), the block adding the
ranks' partial sums. Mixtral has no `shard` in mlx-lm 0.32: `shard_mixtral` cuts it the way mlx-lm cuts
qwen3_moe. What differs from mlx-lm is the head: split by vocabulary rows (vocab_split.py), not whole on
every rank. Embedding and norms are replicated. The all_sum adds in another order than one matmul, so the
logits differ from one process's in the last bits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.nn.layers.distributed import shard_inplace, shard_linear

from services.worker.runner.model.families import (
    ALL_TO_SHARDED,
    SHARDED_TO_ALL,
    ShardingError,
    family,
    head_reader,
    inner_model,
    kv_heads,
    tied,
    width_problems,
)
from services.worker.runner.model.vocab_split import SplitHead, SplitTiedEmbedding
from shared.tensor_split import tensor_split_problem


def tensor_problem(model: nn.Module, n: int) -> str | None:
    """Why this loaded model cannot be split by tensor over n ranks (family, heads, widths), or None."""
    args = model.args
    if problem := tensor_split_problem(family(model), args.num_attention_heads, kv_heads(model), n):
        return problem
    if n == 1:
        return None
    layers = inner_model(model).layers
    problems = width_problems(layers, n)
    if family(model) == "deepseek_v3":  # mlx-lm's shard reaches for the shared expert of every MoE layer
        problems += [
            f"layer {i}: a DeepSeek MoE layer without shared experts" for i, layer in enumerate(layers)
            if hasattr(layer.mlp, "switch_mlp") and getattr(layer.mlp, "shared_experts", None) is None
        ]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        return f"tensor parallel over {n} ranks: {'; '.join(problems[:3])}{more}"
    return None


class SummedMoE(nn.Module):
    """A MoE block whose experts hold a column slice on each rank: the ranks' partial outputs are added."""

    def __init__(self, block: nn.Module, group: mx.distributed.Group) -> None:
        super().__init__()
        self.block, self.group = block, group

    def __call__(self, x: mx.array) -> mx.array:
        return mx.distributed.all_sum(self.block(x), group=self.group)


def shard_mixtral(model: Any, group: mx.distributed.Group) -> None:
    n = group.size()
    for layer in model.model.layers:
        attn = layer.self_attn
        for proj in ("q_proj", "k_proj", "v_proj"):
            setattr(attn, proj, shard_linear(getattr(attn, proj), ALL_TO_SHARDED, group=group))
        attn.o_proj = shard_linear(attn.o_proj, SHARDED_TO_ALL, group=group)
        attn.num_heads //= n
        attn.num_key_value_heads //= n
        experts = layer.block_sparse_moe.switch_mlp
        shard_inplace(experts.gate_proj, ALL_TO_SHARDED, group=group)
        shard_inplace(experts.up_proj, ALL_TO_SHARDED, group=group)
        shard_inplace(experts.down_proj, SHARDED_TO_ALL, group=group)
        layer.block_sparse_moe = SummedMoE(layer.block_sparse_moe, group)


def shard_tensor(model: nn.Module, group: mx.distributed.Group, weights_dir: Path | None = None) -> nn.Module:
    """Tensor-parallel a lazily loaded mlx-lm model in place over `group`; returns the model.

    Raises ShardingError (before touching the model) when the family is not one tensor parallel takes, or
    its heads, widths or quantization groups do not divide by the group size.
    """
    n = group.size()
    if problem := tensor_problem(model, n):
        raise ShardingError(problem)
    if n == 1:
        return model
    if family(model) == "mixtral":
        shard_mixtral(model, group)
    else:
        model.shard(group)  # type: ignore[operator]
    # The head, split by vocabulary rows: each rank computes 1/N of the logits, one all_gather joins them.
    inner, vocab = inner_model(model), model.args.vocab_size
    if tied(model):
        inner.embed_tokens = SplitTiedEmbedding(inner.embed_tokens, group, vocab)
    else:
        model.lm_head = SplitHead(model.lm_head, group, vocab, head_reader(weights_dir, is_tied=False))
    return model
