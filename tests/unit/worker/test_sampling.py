"""Seeded sampling (services/worker/runner/serve/sampling.py): the seed schedule, and no seed made up on a rank."""

from __future__ import annotations

import mlx.core as mx
import pytest

from services.worker.runner.serve.sampling import derive_shard_seed, make_seeded_sampler


def logprobs() -> mx.array:
    logits = mx.array([[0.1, 2.0, 0.3, 1.9, 0.0, 1.0, 1.5, 0.2]])
    return logits - mx.logsumexp(logits, axis=-1, keepdims=True)


def draws(sampler, n: int = 24) -> list[int]:  # noqa: ANN001
    return [int(sampler(logprobs()).item()) for _ in range(n)]


def test_the_seed_schedule_is_splitmix64_of_seed_shard_and_step():
    assert derive_shard_seed(1234, 0, 0) == derive_shard_seed(1234, 0, 0)
    assert len({derive_shard_seed(1234, 0, step) for step in range(100)}) == 100
    assert derive_shard_seed(1234, 0, 1) != derive_shard_seed(1234, 1, 0)
    assert 0 <= derive_shard_seed(-5, 0, 3) < 2**64


def test_one_seed_gives_one_sequence_and_another_seed_another():
    assert draws(make_seeded_sampler(1.0, 1.0, 7)) == draws(make_seeded_sampler(1.0, 1.0, 7))
    assert draws(make_seeded_sampler(1.0, 1.0, 7)) != draws(make_seeded_sampler(1.0, 1.0, 8))


def test_greedy_needs_no_seed():
    assert draws(make_seeded_sampler(0.0, 1.0, None), 3) == [1, 1, 1]


def test_a_sampled_request_without_its_admission_seed_is_refused():
    """A seed drawn here would differ from rank to rank: admission fixes it, once, for every rank."""
    with pytest.raises(ValueError, match="seed"):
        make_seeded_sampler(0.8, 1.0, None)
