"""What differs between the model families the runner splits: how their layers want the attention mask, and
the widths tensor parallel cuts (checked before anything is cut, with the quantization groups).

The families are mlx-lm's modules (`type(model).__module__`): llama (also Mistral's configs), qwen2, mixtral,
deepseek_v3 and qwen3_moe. Which of them tensor parallel takes, and over how many ranks, is the rule placement
uses too (shared/tensor_split.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlx.nn as nn

from services.worker.runner.model.safetensors_rows import read_rows
from services.worker.runner.model.vocab_split import RowReader

# Layers whose attention applies the mask with mx.where (MLA adds its rope scores under the mask), so
# the mask must be an array, never mlx-lm's "causal" shorthand.
MASK_AS_ARRAY = frozenset({"deepseek_v3"})

ALL_TO_SHARDED, SHARDED_TO_ALL = "all-to-sharded", "sharded-to-all"


class ShardingError(ValueError):
    """The model cannot be split the way it was asked (wrong layer range, heads that do not divide...)."""


def family(model: nn.Module) -> str:
    """The mlx-lm module the model's class comes from ("llama", "deepseek_v3", ...)."""
    return type(model).__module__.rsplit(".", 1)[-1]


def model_type(model: nn.Module) -> str:
    return str(getattr(model, "model_type", None) or getattr(model.args, "model_type", family(model)))


def kv_heads(model: nn.Module) -> int:
    args = model.args
    return int(getattr(args, "num_key_value_heads", None) or args.num_attention_heads)


def _attention_cuts(name: str, attn: Any) -> Iterator[tuple[str, nn.Module, str]]:
    if hasattr(attn, "q_b_proj"):  # MLA with a low-rank query
        yield f"{name}.q_b_proj", attn.q_b_proj, ALL_TO_SHARDED
    else:
        yield f"{name}.q_proj", attn.q_proj, ALL_TO_SHARDED
    for proj in ("k_proj", "v_proj"):
        if hasattr(attn, proj):
            yield f"{name}.{proj}", getattr(attn, proj), ALL_TO_SHARDED
    yield f"{name}.o_proj", attn.o_proj, SHARDED_TO_ALL


def _mlp_cuts(name: str, mlp: Any) -> Iterator[tuple[str, nn.Module, str]]:
    yield f"{name}.gate_proj", mlp.gate_proj, ALL_TO_SHARDED
    yield f"{name}.up_proj", mlp.up_proj, ALL_TO_SHARDED
    yield f"{name}.down_proj", mlp.down_proj, SHARDED_TO_ALL


def layer_cuts(i: int, layer: Any) -> Iterator[tuple[str, nn.Module, str]]:
    """Every projection of layer i that tensor parallel cuts, with the way it is cut."""
    yield from _attention_cuts(f"layer {i} self_attn", layer.self_attn)
    mlp = getattr(layer, "block_sparse_moe", None) or layer.mlp
    name = f"layer {i} {'block_sparse_moe' if hasattr(layer, 'block_sparse_moe') else 'mlp'}"
    if hasattr(mlp, "switch_mlp"):  # experts: every rank keeps a slice of each one
        yield from _mlp_cuts(f"{name}.switch_mlp", mlp.switch_mlp)
        if getattr(mlp, "shared_experts", None) is not None:
            yield from _mlp_cuts(f"{name}.shared_experts", mlp.shared_experts)
    else:
        yield from _mlp_cuts(name, mlp)


def cut_problem(name: str, linear: nn.Module, how: str, n: int) -> str | None:
    """Why `linear` (dense, quantized, or a stack of experts) cannot be cut `how` into n parts, or None."""
    weight = linear.weight
    bits = getattr(linear, "bits", None)
    group_size = getattr(linear, "group_size", None)
    in_dims = weight.shape[-1] * 32 // bits if bits else weight.shape[-1]
    if how == ALL_TO_SHARDED:
        width = weight.shape[-2]
        return f"{name}: {width} output columns do not divide by {n}" if width % n else None
    if in_dims % n:
        return f"{name}: input width {in_dims} does not divide by {n}"
    if group_size and (in_dims // n) % group_size:
        return f"{name}: input width {in_dims} / {n} ranks is not a multiple of the quantization group size {group_size}"
    return None


def width_problems(layers: list[Any], n: int) -> list[str]:
    problems = []
    for i, layer in enumerate(layers):
        for name, linear, how in layer_cuts(i, layer):
            if (problem := cut_problem(name, linear, how, n)) is not None:
                problems.append(problem)
    return problems


def inner_model(model: nn.Module) -> Any:
    """The decoder stack (`model.model`: embed_tokens, layers, norm), as every family here has it."""
    inner: Any = getattr(model, "model", None)
    for attr in ("embed_tokens", "layers", "norm"):
        if inner is None or not hasattr(inner, attr):
            raise ShardingError(
                f"{type(model).__module__}.{type(model).__name__} has no model.{attr}: the runner splits models "
                f"with an embedding, a list of decoder layers and a final norm (llama, qwen2, mixtral, deepseek_v3, qwen3_moe)"
            )
    return inner


def tied(model: nn.Module) -> bool:
    args = getattr(model, "args", None)
    return bool(getattr(args, "tie_word_embeddings", False)) or not hasattr(model, "lm_head")


def head_reader(weights_dir: Path | None, is_tied: bool) -> RowReader | None:
    """Reads rows of the head's parameters from the model folder (the tied embedding or the lm_head)."""
    if weights_dir is None:
        return None
    prefix = "model.embed_tokens" if is_tied else "lm_head"
    return lambda name, start, end: read_rows(weights_dir, f"{prefix}.{name}", start, end)
