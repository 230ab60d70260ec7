"""Seeded sampling: every token's randomness comes from derive_shard_seed(seed, choice, step), so a request with
a seed gives the same tokens whatever else shares its batch and whatever the placement. The filters (top-p,
min-p, top-k) and the logits processors (penalties, logit bias) are mlx-lm's; only the draw is ours, keyed."""

from __future__ import annotations

from collections.abc import Callable

import mlx.core as mx
import numpy as np
from mlx_lm.sample_utils import apply_min_p, apply_top_k, apply_top_p, make_logits_processors

from shared.generation import SamplingParams, TokenLogprob, TopLogprob

GOLDEN = 0x9E3779B97F4A7C15
MASK64 = 0xFFFFFFFFFFFFFFFF
# How many of the latest tokens (the prompt's last ones, then the output's) the penalties look at: mlx-lm's
# default for all three.
PENALTY_CONTEXT = 20

Sampler = Callable[[mx.array], mx.array]
LogitsProcessor = Callable[[mx.array, mx.array], mx.array]


def derive_shard_seed(base_seed: int, shard_id: int, step: int) -> int:
    """splitmix64 of (seed, shard, step), as in the exo seed. The shard is the output choice (OpenAI's `n`),
    not a device: the same seed gives the same tokens on one node or across a pipeline."""
    z = (base_seed + GOLDEN * shard_id + step) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def make_seeded_sampler(
    temperature: float, top_p: float, seed: int | None, *, top_k: int = 0, min_p: float = 0.0, choice: int = 0,
    first_step: int = 0,
) -> Sampler:
    """A sampler for one request; it counts its own steps (from `first_step`: the completion tokens already
    made, when a request continues in the batch after speculative steps). Greedy when temperature is 0. A sampled
    request's seed was fixed at admission (admission.py) and travels to every rank: a seed drawn here would
    differ between ranks."""
    if temperature <= 0.0:
        return lambda logprobs: mx.argmax(logprobs, axis=-1)
    if seed is None:
        raise ValueError("a sampled request reached the engine without the seed fixed at its admission")
    step = first_step

    def sample(logprobs: mx.array) -> mx.array:
        nonlocal step
        token = token_at(logprobs, temperature, top_p, seed, step, top_k=top_k, min_p=min_p, choice=choice)
        step += 1
        return token

    return sample


def sampler_of(sampling: SamplingParams, first_step: int = 0) -> Sampler:
    return make_seeded_sampler(
        sampling.temperature, sampling.top_p, sampling.seed,
        top_k=sampling.top_k, min_p=sampling.min_p, choice=sampling.choice, first_step=first_step,
    )  # fmt: skip


def processors_of(sampling: SamplingParams) -> list[LogitsProcessor]:
    """mlx-lm's processors for the request's penalties and logit bias (none: the batch skips the step)."""
    return make_logits_processors(
        logit_bias=dict(sampling.logit_bias) or None,
        repetition_penalty=sampling.repetition_penalty if sampling.repetition_penalty != 1.0 else None,
        repetition_context_size=PENALTY_CONTEXT,
        presence_penalty=sampling.presence_penalty or None,
        presence_context_size=PENALTY_CONTEXT,
        frequency_penalty=sampling.frequency_penalty or None,
        frequency_context_size=PENALTY_CONTEXT,
    )


def token_logprob(
    logprobs: np.ndarray, token: int, top: int, token_bytes: Callable[[int], bytes]
) -> TokenLogprob:
    """The drawn token's log probability and the `top` most likely tokens' (most likely first; ties by id)."""
    best: list[TopLogprob] = []
    if top > 0:
        ids = np.argpartition(-logprobs, top - 1)[:top]
        ids = ids[np.lexsort((ids, -logprobs[ids]))]
        best = [_top(int(i), float(logprobs[i]), token_bytes) for i in ids]
    raw = token_bytes(token)
    return TokenLogprob(raw.decode("utf-8", errors="replace"), _finite(float(logprobs[token])), list(raw), best)


def _top(token: int, logprob: float, token_bytes: Callable[[int], bytes]) -> TopLogprob:
    raw = token_bytes(token)
    return TopLogprob(raw.decode("utf-8", errors="replace"), _finite(logprob), list(raw))


def _finite(logprob: float) -> float:
    """JSON has no -inf: a token the filters ruled out (or a forced end) gets OpenAI's floor, -9999."""
    return logprob if logprob > -9999.0 else -9999.0


def token_at(
    logprobs: mx.array, temperature: float, top_p: float, seed: int | None, step: int, *,
    top_k: int = 0, min_p: float = 0.0, choice: int = 0,
) -> mx.array:  # fmt: skip
    """The token of completion position `step`, from that position's logprobs (shape (1, vocab)): what the
    request's sampler picks there, whichever way the logprobs were computed (one step or a verification)."""
    if temperature <= 0.0:
        return mx.argmax(logprobs, axis=-1)
    assert seed is not None
    key = mx.random.key(derive_shard_seed(seed, choice, step))
    if top_p < 1.0:
        logprobs = apply_top_p(logprobs, top_p)
    if min_p > 0.0:
        logprobs = apply_min_p(logprobs, min_p)
    if 0 < top_k < logprobs.shape[-1]:
        logprobs = apply_top_k(logprobs, top_k)
    return mx.random.categorical(logprobs * (1.0 / temperature), key=key)
