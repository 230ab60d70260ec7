"""Pipeline parallel: rank r holds layers [a_r, b_r) in placement order and passes the hidden state on.

The hand-off is send/recv; during prefill the send is tied into the last KV cache with `mx.depends`, as
mlx-lm does, or the next stage would wait for ever. One wrapper serves every family (families.py says what
differs: the mask). mlx-lm's own `pipeline()` (qwen2, deepseek_v3, qwen3_moe only) numbers stages from the
last layer and keeps the embedding and the whole head on every rank, so the runner does not use it. Who
computes the logits (`logits_on`):
  - "vocab_split" (default): every rank computes the rows of the head for its slice of the vocabulary, read
    straight from safetensors (safetensors_rows.py), and an all_gather joins them (vocab_split.py). The head is
    the largest matrix of a small model; split, no rank holds it whole and N ranks share its compute.
  - "last_rank": the last rank alone runs norm + head; the logits are all-gathered.
  - "every_rank" (mlx-lm's pattern): every rank holds and runs the whole head.
The measured ms per token of each choice are in the README ("Pipeline and tensor parallel").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import mlx.core as mx
import mlx.nn as nn

from services.worker.runner.model.families import (
    MASK_AS_ARRAY,
    ShardingError,
    family,
    head_reader,
    inner_model,
    tied,
)
from services.worker.runner.model.vocab_split import gather_vocab, part_logits, vocab_part

# Pipeline: who computes the logits. "every_rank": mlx-lm's pattern, the last hidden state is gathered and
# every rank runs norm + head. "last_rank": only the last rank runs norm + head and the logits are
# gathered (vocab floats per token instead of hidden_size), so other ranks hold no head. "vocab_split": the
# last hidden state is gathered, every rank computes the logits of its slice of the vocabulary and the
# slices are gathered (see vocab_split.py).
LogitsOn = Literal["every_rank", "last_rank", "vocab_split"]


def _check_range(layers: list[Any], rank: int, size: int, start_layer: int, end_layer: int) -> None:
    n_layers = len(layers)
    if not 0 <= start_layer < end_layer <= n_layers:
        raise ShardingError(f"layer range [{start_layer}, {end_layer}) is not inside the model's {n_layers} layers")
    if (rank == 0) != (start_layer == 0):
        raise ShardingError(f"rank {rank} has start layer {start_layer}: rank 0, and only rank 0, starts at 0")
    if (rank == size - 1) != (end_layer == n_layers):
        raise ShardingError(f"rank {rank} of {size} ends at layer {end_layer}: only the last rank ends at {n_layers}")
    for i, layer in enumerate(layers[start_layer:end_layer]):
        if getattr(layer, "use_sliding", False):
            raise ShardingError(f"layer {start_layer + i} uses sliding-window attention, not supported here")


class PipelineStage(nn.Module):
    """Our own wrapper around an mlx-lm `Model` of any family here: this rank's layers plus the pipeline hand-off.

    It has the calling convention mlx-lm's generation loop expects: `model(inputs, cache=...)` returns
    logits of shape (B, L, vocab), `model.layers` are this rank's layers and `make_cache()` makes one KV
    cache per local layer. mlx-lm's classes are not modified.
    """

    UNCOUNTED_HEADS = ("_head_view",)  # for quantized_cpu.use_cpu_kernel: a head outside the parameters

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
        inner = inner_model(model)
        n_layers = len(inner.layers)
        rank, size = group.rank(), group.size()
        _check_range(inner.layers, rank, size, start_layer, end_layer)

        self.args = model.args
        self.model_type = getattr(model, "model_type", None)
        self.mask_as_array = family(model) in MASK_AS_ARRAY
        self.group = group
        self.rank, self.size = rank, size
        self.start_layer, self.end_layer, self.n_layers = start_layer, end_layer, n_layers
        self.tied = tied(model)
        self.logits_on = logits_on
        self._dtype: mx.Dtype | None = None
        self.computes_logits = logits_on in ("every_rank", "vocab_split") or rank == size - 1
        # Keep only what this rank uses; everything else is dropped before any weight is read.
        self.layers = list(inner.layers[start_layer:end_layer])
        self.norm = inner.norm
        self._keep_head(model, inner, weights_dir)

    def _keep_head(self, model: nn.Module, inner: Any, weights_dir: Path | None) -> None:
        """Keep the embedding and the head (or this rank's rows of it) that this rank uses, nothing more."""
        rank, size = self.rank, self.size
        if self.logits_on == "vocab_split":
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
        mask = create_attention_mask(h, cache[0], return_array=self.mask_as_array)
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


def shard_pipeline(
    model: nn.Module,
    group: mx.distributed.Group,
    start_layer: int,
    end_layer: int,
    logits_on: LogitsOn = "vocab_split",
    weights_dir: Path | None = None,
) -> PipelineStage:
    """Keep layers [start_layer, end_layer) of a lazily loaded mlx-lm model (any family in families.py) on this rank.

    Rank r must hold the layers right after rank r-1's (rank 0 from layer 0, the last rank up to the
    last layer), as `services.master.placement` assigns them. Returns a new module to generate with;
    call `materialize` (or `mx.eval(stage.parameters())`) to read this rank's weights.
    """
    return PipelineStage(model, group, start_layer, end_layer, logits_on, weights_dir)
