"""Split one mlx-lm model across the ranks of an `mx.distributed` group: pipeline or tensor parallel.

The model arrives loaded lazily (`mlx_lm.utils.load_model(path, lazy=True)`), so the weights a rank drops are
never read from disk; only what remains is evaluated (`materialize`). Every rank runs the same engine step on
the same inputs and gets the same logits, so every rank samples the same token and no token crosses ranks.

Pipeline (`shard_pipeline`): rank r holds layers [a_r, b_r) in placement order and passes the hidden state on
with send/recv; during prefill the send is tied into the last KV cache with `mx.depends`, as mlx-lm does, or
the next stage would wait for ever. Who computes the logits (`logits_on`):
  - "vocab_split" (default): every rank computes the rows of the head for its slice of the vocabulary, read
    straight from safetensors (safetensors_rows.py), and an all_gather joins them (vocab_split.py). The head is
    the largest matrix of a small model; split, no rank holds it whole and N ranks share its compute.
  - "last_rank": the last rank alone runs norm + head; the logits are all-gathered.
  - "every_rank" (mlx-lm's pattern): every rank holds and runs the whole head.
The measured ms per token of each choice are in the README ("Pipeline and tensor parallel").

Tensor parallel (`shard_tensor`), Llama family: q/k/v/gate/up become all-to-sharded linears, o/down
sharded-to-all (partial sums added with all_sum); embedding and norms are replicated, the head split by
vocabulary rows as above. Needs heads, KV heads and the MLP width divisible by N (and, quantized, the per-rank
input width of o/down divisible by the group size). The all_sum adds in another order than one matmul, so the
logits differ from one process's in the last bits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, cast

import mlx.core as mx
import mlx.nn as nn
from mlx.nn.layers.distributed import shard_linear
from mlx.utils import tree_flatten

from services.worker.runner.model.safetensors_rows import read_rows
from services.worker.runner.model.vocab_split import (
    RowReader,
    SplitHead,
    SplitTiedEmbedding,
    gather_vocab,
    part_logits,
    vocab_part,
)

Strategy = Literal["single", "pipeline", "tensor"]
# Pipeline: who computes the logits. "every_rank": mlx-lm's pattern, the last hidden state is gathered and
# every rank runs norm + head. "last_rank": only the last rank runs norm + head and the logits are
# gathered (vocab floats per token instead of hidden_size), so other ranks hold no head. "vocab_split": the
# last hidden state is gathered, every rank computes the logits of its slice of the vocabulary and the
# slices are gathered (see vocab_split.py).
LogitsOn = Literal["every_rank", "last_rank", "vocab_split"]


class ShardingError(ValueError):
    """The model cannot be split the way it was asked (wrong layer range, heads that do not divide...)."""


# --------------------------------------------------------------------------------------------- pipeline


def _inner(model: nn.Module) -> nn.Module:
    inner: Any = getattr(model, "model", None)
    for attr in ("embed_tokens", "layers", "norm"):
        if inner is None or not hasattr(inner, attr):
            raise ShardingError(
                f"{type(model).__module__}.{type(model).__name__} is not a llama-style model "
                f"(model.model.{attr} missing); pipeline sharding supports llama-family models"
            )
    return inner


def _tied(model: nn.Module) -> bool:
    args = getattr(model, "args", None)
    return bool(getattr(args, "tie_word_embeddings", False)) or not hasattr(model, "lm_head")


class PipelineStage(nn.Module):
    """Our own wrapper around an mlx-lm llama-style `Model`: this rank's layers plus the pipeline hand-off.

    It has the calling convention mlx-lm's generation loop expects: `model(inputs, cache=...)` returns
    logits of shape (B, L, vocab), `model.layers` are this rank's layers and `make_cache()` makes one KV
    cache per local layer. mlx-lm's classes are not modified.
    """

    def __init__(
        self,
        model: nn.Module,
        group: mx.distributed.Group,
        start_layer: int,
        end_layer: int,
        logits_on: LogitsOn = "vocab_split",
        weights_dir: Path | None = None,
    ) -> None:
        super().__init__()
        if logits_on not in ("every_rank", "last_rank", "vocab_split"):
            raise ShardingError(f"logits_on must be every_rank, last_rank or vocab_split, not {logits_on!r}")
        inner = _inner(model)
        n_layers = len(inner.layers)
        rank, size = group.rank(), group.size()
        if not 0 <= start_layer < end_layer <= n_layers:
            raise ShardingError(f"layer range [{start_layer}, {end_layer}) is not inside the model's {n_layers} layers")
        if (rank == 0) != (start_layer == 0):
            raise ShardingError(f"rank {rank} has start layer {start_layer}: rank 0, and only rank 0, starts at 0")
        if (rank == size - 1) != (end_layer == n_layers):
            raise ShardingError(
                f"rank {rank} of {size} ends at layer {end_layer}: only the last rank ends at {n_layers}"
            )
        for i, layer in enumerate(inner.layers[start_layer:end_layer]):
            if getattr(layer, "use_sliding", False):
                raise ShardingError(f"layer {start_layer + i} uses sliding-window attention, not supported here")

        self.args = model.args
        self.model_type = getattr(model, "model_type", None)
        self.group = group
        self.rank, self.size = rank, size
        self.start_layer, self.end_layer, self.n_layers = start_layer, end_layer, n_layers
        self.tied = _tied(model)
        self.logits_on = logits_on
        self._dtype: mx.Dtype | None = None
        self.computes_logits = logits_on in ("every_rank", "vocab_split") or rank == size - 1
        # Keep only what this rank uses; everything else is dropped before any weight is read.
        self.layers = list(inner.layers[start_layer:end_layer])
        self.norm = inner.norm
        if logits_on == "vocab_split":
            if rank == 0:
                self.embed_tokens = inner.embed_tokens
            head = inner.embed_tokens if self.tied else model.lm_head
            if rank == 0 and self.tied:
                # Rank 0 holds the whole tied matrix for its input: its slice is a view, kept out of the
                # module's parameters so that it is neither counted nor read twice.
                object.__setattr__(self, "_head_view", vocab_part(head, rank, size, self.args.vocab_size, view=True))
            else:
                read = head_reader(weights_dir, self.tied)
                self.head_part = vocab_part(head, rank, size, self.args.vocab_size, read=read)
        else:
            if rank == 0 or (self.tied and self.computes_logits):
                self.embed_tokens = inner.embed_tokens
            if not self.tied and self.computes_logits:
                self.lm_head = model.lm_head

    # What a receiving rank expects: the activation dtype of the embedding output (float32 for f32 and for
    # quantized embeddings with float32 scales). Every rank computes it the same way from the config.
    def _hidden_dtype(self) -> mx.Dtype:
        if self._dtype is None:
            if hasattr(self, "embed_tokens"):
                self._dtype = self.embed_tokens(mx.array([[0]])).dtype
            else:
                self._dtype = self.norm.weight.dtype
        return self._dtype

    @property
    def is_first(self) -> bool:
        return self.rank == 0

    @property
    def is_last(self) -> bool:
        return self.rank == self.size - 1

    def make_cache(self) -> list[Any]:
        from mlx_lm.models.cache import KVCache

        return [KVCache() for _ in self.layers]

    def __call__(
        self, inputs: mx.array, cache: list[Any] | None = None, input_embeddings: mx.array | None = None
    ) -> mx.array:
        from mlx_lm.models.base import create_attention_mask

        B, L = inputs.shape[0], inputs.shape[1] if input_embeddings is None else input_embeddings.shape[1]
        if cache is None:
            cache = [None] * len(self.layers)
        if self.is_first:
            h = input_embeddings if input_embeddings is not None else self.embed_tokens(inputs)
        else:
            hidden = self.args.hidden_size
            h = mx.distributed.recv((B, L, hidden), self._hidden_dtype(), self.rank - 1, group=self.group)
        mask = create_attention_mask(h, cache[0])
        for layer, c in zip(self.layers, cache):
            h = layer(h, mask, cache=c)
        if not self.is_last:
            h = mx.distributed.send(h, self.rank + 1, group=self.group)
            # Prefill evaluates only the caches: make the last cache depend on the send.
            if cache[-1] is not None:
                cache[-1].keys = mx.depends(cache[-1].keys, h)
        last = self.size - 1
        if self.logits_on == "vocab_split":
            if self.size > 1:
                # Every rank gets the last stage's hidden state (in the norm's dtype, which every rank holds).
                dtype = self.norm.weight.dtype
                mine = h.astype(dtype) if self.is_last else mx.depends(mx.zeros((B, L, self.args.hidden_size), dtype), h)
                h = mx.distributed.all_gather(mine, group=self.group)[last * B : (last + 1) * B]
            head = self.head_part if "head_part" in self else self._head_view
            return gather_vocab(part_logits(head, self.norm(h)), self.group, self.args.vocab_size)
        if self.logits_on == "every_rank":
            if self.size > 1:
                # Every rank gets the last stage's hidden state (and the send stays in the graph).
                h = mx.distributed.all_gather(h, group=self.group)[last * B : (last + 1) * B]
            return self._head(h)
        if self.is_last:
            logits = self._head(h)
        else:
            # A placeholder of the logits' shape that depends on the send, so the send is evaluated.
            logits = mx.depends(mx.zeros((B, L, self.args.vocab_size), dtype=self._hidden_dtype()), h)
        if self.size > 1:
            logits = mx.distributed.all_gather(logits, group=self.group)[last * B : (last + 1) * B]
        return logits

    def _head(self, h: mx.array) -> mx.array:
        h = self.norm(h)
        return self.embed_tokens.as_linear(h) if self.tied else self.lm_head(h)


def head_reader(weights_dir: Path | None, tied: bool) -> RowReader | None:
    """Reads rows of the head's parameters from the model folder (the tied embedding or the lm_head)."""
    if weights_dir is None:
        return None
    prefix = "model.embed_tokens" if tied else "lm_head"
    return lambda name, start, end: read_rows(weights_dir, f"{prefix}.{name}", start, end)


def shard_pipeline(
    model: nn.Module,
    group: mx.distributed.Group,
    start_layer: int,
    end_layer: int,
    logits_on: LogitsOn = "vocab_split",
    weights_dir: Path | None = None,
) -> PipelineStage:
    """Keep layers [start_layer, end_layer) of a lazily loaded llama-style model on this rank.

    Rank r must hold the layers right after rank r-1's (rank 0 from layer 0, the last rank up to the
    last layer), as `services.master.placement` assigns them. Returns a new module to generate with;
    call `materialize` (or `mx.eval(stage.parameters())`) to read this rank's weights.
    """
    return PipelineStage(model, group, start_layer, end_layer, logits_on, weights_dir)


# ----------------------------------------------------------------------------------------------- tensor


def tensor_parallel_problem(n_heads: int, n_kv_heads: int, world_size: int, intermediate_size: int | None = None) -> str | None:
    """Why a model with these dimensions cannot be split over `world_size` ranks, or None when it can."""
    if world_size < 1:
        return f"world size {world_size} < 1"
    problems = []
    if n_heads % world_size:
        problems.append(f"{n_heads} attention heads")
    if n_kv_heads % world_size:
        problems.append(f"{n_kv_heads} KV heads")
    if intermediate_size is not None and intermediate_size % world_size:
        problems.append(f"MLP width {intermediate_size}")
    if problems:
        return f"tensor parallel over {world_size} ranks needs divisible dimensions: {', '.join(problems)} do not divide by {world_size}"
    return None


def _check_quantized_split(name: str, linear: nn.Module, world_size: int) -> None:
    group_size = getattr(linear, "group_size", None)
    if group_size is None:  # dense
        return
    in_dims = linear.weight.shape[-1] * 32 // linear.bits
    if (in_dims // world_size) % group_size:
        raise ShardingError(
            f"{name}: input width {in_dims} / {world_size} ranks is not a multiple of the quantization group "
            f"size {group_size}"
        )


def shard_tensor(model: nn.Module, group: mx.distributed.Group, weights_dir: Path | None = None) -> nn.Module:
    """Tensor-parallel a lazily loaded mlx-lm llama model in place over `group`; returns the model.

    Raises ShardingError (before touching the model) when heads, KV heads or the MLP width do not divide
    by the group size.
    """
    inner = _inner(model)
    n = group.size()
    args = model.args
    n_heads, n_kv = args.num_attention_heads, args.num_key_value_heads or args.num_attention_heads
    if problem := tensor_parallel_problem(n_heads, n_kv, n, args.intermediate_size):
        raise ShardingError(problem)
    if n == 1:
        return model
    for i, layer in enumerate(inner.layers):
        attn, mlp = layer.self_attn, layer.mlp
        _check_quantized_split(f"layer {i} o_proj", attn.o_proj, n)
        _check_quantized_split(f"layer {i} down_proj", mlp.down_proj, n)
    for layer in inner.layers:
        attn, mlp = layer.self_attn, layer.mlp
        attn.q_proj = shard_linear(attn.q_proj, "all-to-sharded", group=group)
        attn.k_proj = shard_linear(attn.k_proj, "all-to-sharded", group=group)
        attn.v_proj = shard_linear(attn.v_proj, "all-to-sharded", group=group)
        attn.o_proj = shard_linear(attn.o_proj, "sharded-to-all", group=group)
        attn.n_heads //= n
        attn.n_kv_heads //= n
        mlp.gate_proj = shard_linear(mlp.gate_proj, "all-to-sharded", group=group)
        mlp.up_proj = shard_linear(mlp.up_proj, "all-to-sharded", group=group)
        mlp.down_proj = shard_linear(mlp.down_proj, "sharded-to-all", group=group)
    # The head, split by vocabulary rows: each rank computes 1/N of the logits, one all_gather joins them.
    if _tied(model):
        inner.embed_tokens = SplitTiedEmbedding(inner.embed_tokens, group, args.vocab_size)
    else:
        model.lm_head = SplitHead(model.lm_head, group, args.vocab_size, head_reader(weights_dir, tied=False))
    return model


# ------------------------------------------------------------------------------------------ whole flow


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
) -> tuple[nn.Module, Any]:
    """Load an MLX model folder lazily, shard it for this rank, read only this rank's weights.

    Returns (model, tokenizer); the model works with the engine's batched steps on every rank with the
    same prompt and sampler. `strategy="single"` (or a group of size 1) loads the whole model.
    """
    from mlx_lm.utils import load_model, load_tokenizer

    from services.worker.runner.model import cpu_fusion, quantized_cpu

    fuse = cpu_fusion.wanted()  # decided before any weight is read: a bad EXO_CPU_FUSION fails at once
    kernel = quantized_cpu.wanted()  # likewise EXO_CPU_KERNEL
    path = Path(model_path)
    from services.worker.models.hub_files import holds_every_weight_file

    model, config = load_model(path, lazy=True, strict=holds_every_weight_file(path))
    tokenizer = load_tokenizer(path, eos_token_ids=config.get("eos_token_id"))
    size = 1 if group is None else group.size()
    n_layers = len(_inner(model).layers) if strategy != "single" else len(model.layers)
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
        cpu_fusion.fuse_for_cpu(model)
    return model, tokenizer
