"""Split one mlx-lm model across the ranks of an `mx.distributed` group: pipeline (pipeline.py) or tensor
parallel (tensor.py), for the families in families.py.

The model arrives loaded lazily (`mlx_lm.utils.load_model(path, lazy=True)`), so the weights a rank drops are
never read from disk; only what remains is evaluated (`materialize`). Every rank runs the same engine step on
the same inputs and gets the same logits, so every rank samples the same token and no token crosses ranks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, cast

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from services.worker.runner.model.families import ShardingError, inner_model
from services.worker.runner.model.pipeline import LogitsOn, PipelineStage, shard_pipeline
from services.worker.runner.model.tensor import shard_tensor, tensor_problem

__all__ = [
    "LogitsOn", "PipelineStage", "ShardingError", "Strategy", "check_layer_ranges", "load_shard", "materialize",
    "parameter_bytes", "shard_pipeline", "shard_tensor", "tensor_problem",
]

Strategy = Literal["single", "pipeline", "tensor"]


def parameter_bytes(model: nn.Module) -> int:
    """Bytes of the parameters the module still holds (lazy arrays are counted without being read)."""
    return sum(v.nbytes for _, v in cast("list[tuple[str, mx.array]]", tree_flatten(model.parameters())))


def materialize(model: nn.Module, group: mx.distributed.Group | None = None) -> None:
    """Read this rank's weights, then wait for every rank (so no rank's first collective times out)."""
    mx.eval(model.parameters())
    if group is not None and group.size() > 1:
        mx.eval(mx.distributed.all_sum(mx.array(1.0), group=group, stream=mx.cpu))


def check_layer_ranges(group: mx.distributed.Group, start_layer: int, end_layer: int, n_layers: int) -> None:
    """Collective check that the ranks' layer ranges tile [0, n_layers) in rank order; raises on every rank."""
    mine = mx.array([start_layer, end_layer], dtype=mx.int32)
    ranges = cast("list[list[int]]", mx.distributed.all_gather(mine, group=group, stream=mx.cpu).reshape(-1, 2).tolist())
    expected = 0
    for rank, (start, end) in enumerate(ranges):
        if start != expected or end <= start:
            raise ShardingError(f"ranks' layer ranges {ranges} do not tile [0, {n_layers}) in rank order (rank {rank})")
        expected = end
    if expected != n_layers:
        raise ShardingError(f"ranks' layer ranges {ranges} end at {expected}, not at {n_layers}")


def load_shard(
    model_path: Path | str,
    strategy: Strategy,
    group: mx.distributed.Group | None = None,
    start_layer: int = 0,
    end_layer: int | None = None,
    logits_on: LogitsOn = "vocab_split",
    cpu_fusion: str = "on",
    cpu_kernel: str = "auto",
) -> tuple[nn.Module, Any]:
    """Load an MLX model folder lazily, shard it for this rank, read only this rank's weights.

    Returns (model, tokenizer); the model works with the engine's batched steps on every rank with the
    same prompt and sampler. `strategy="single"` (or a group of size 1) loads the whole model.
    """
    from mlx_lm.utils import load_model, load_tokenizer

    from services.worker.runner.model import cpu_fusion as fusion, quantized_cpu

    fuse = fusion.wanted(cpu_fusion)  # decided before any weight is read: a bad one fails at once
    kernel = quantized_cpu.wanted(cpu_kernel)  # likewise
    path = Path(model_path)
    from services.worker.models.hub_files import holds_every_weight_file

    model, config = load_model(path, lazy=True, strict=holds_every_weight_file(path))
    tokenizer = load_tokenizer(path, eos_token_ids=config.get("eos_token_id"))
    size = 1 if group is None else group.size()
    n_layers = len(inner_model(model).layers) if strategy != "single" else len(model.layers)
    if strategy == "single" or size == 1:
        if strategy == "pipeline" and (start_layer, end_layer or n_layers) != (0, n_layers):
            raise ShardingError("a one-rank pipeline holds every layer")
        materialize(model)
    elif strategy == "pipeline":
        assert group is not None
        end = n_layers if end_layer is None else end_layer
        check_layer_ranges(group, start_layer, end, n_layers)
        model = shard_pipeline(model, group, start_layer, end, logits_on, path)
        materialize(model, group)
    elif strategy == "tensor":
        assert group is not None
        shard_tensor(model, group, path)
        materialize(model, group)
    else:
        raise ShardingError(f"unknown strategy {strategy!r}")
    if kernel:  # quantized layers through our CPU kernel (quantized_cpu.py); every rank decides the same way
        quantized_cpu.use_cpu_kernel(model)
    if fuse:  # fused norms and RoPEs on a CPU (cpu_fusion.py); every rank decides the same way
        fusion.fuse_for_cpu(model)
    if fuse and kernel:  # decode steps of llama blocks in two primitives each (fused_layer.py)
        from services.worker.runner.model.fused_layer import fuse_layers

        fuse_layers(model)
    return model, tokenizer
