"""Seeded sampling: every token's randomness comes from derive_shard_seed(seed, shard, step), so a request with
a seed gives the same tokens whatever else shares its batch and whatever the placement."""

from __future__ import annotations

from collections.abc import Callable

import mlx.core as mx
from mlx_lm.sample_utils import apply_top_p

GOLDEN = 0x9E3779B97F4A7C15
MASK64 = 0xFFFFFFFFFFFFFFFF

# The shard id in the seed schedule is the output choice (OpenAI's `n`), not a device: the same seed must give
# the same tokens on one node or across a pipeline. Only n=1 is served, so it is always 0.
CHOICE_SHARD = 0


def derive_shard_seed(base_seed: int, shard_id: int, step: int) -> int:
    """splitmix64 of (seed, shard, step), as in the exo seed."""
    z = (base_seed + GOLDEN * shard_id + step) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def make_seeded_sampler(
    temperature: float, top_p: float, seed: int | None, first_step: int = 0
) -> Callable[[mx.array], mx.array]:
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
        token = token_at(logprobs, temperature, top_p, seed, step)
        step += 1
        return token

    return sample


def token_at(logprobs: mx.array, temperature: float, top_p: float, seed: int | None, step: int) -> mx.array:
    """The token of completion position `step`, from that position's logprobs (shape (1, vocab)): what the
    request's sampler picks there, whichever way the logprobs were computed (one step or a verification)."""
    if temperature <= 0.0:
        return mx.argmax(logprobs, axis=-1)
    assert seed is not None
    key = mx.random.key(derive_shard_seed(seed, CHOICE_SHARD, step))
    if top_p < 1.0:
        logprobs = apply_top_p(logprobs, top_p)
    return mx.random.categorical(logprobs * (1.0 / temperature), key=key)
