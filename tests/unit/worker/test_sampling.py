"""Seeded sampling (services/worker/runner/serve/sampling.py): the seed schedule, and no seed made up on a rank."""

from __future__ import annotations

import mlx.core as mx
import pytest

import numpy as np

from services.worker.runner.serve.sampling import (
    derive_shard_seed,
    make_seeded_sampler,
    processors_of,
    token_logprob,
)
from shared.generation import SamplingParams


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


def test_each_choice_has_its_own_schedule():
    assert draws(make_seeded_sampler(1.0, 1.0, 7, choice=1)) != draws(make_seeded_sampler(1.0, 1.0, 7))
    assert draws(make_seeded_sampler(1.0, 1.0, 7, choice=1)) == draws(make_seeded_sampler(1.0, 1.0, 7, choice=1))


def test_top_k_and_min_p_keep_only_the_likeliest():
    assert set(draws(make_seeded_sampler(2.0, 1.0, 5, top_k=2), 40)) <= {1, 3}
    assert set(draws(make_seeded_sampler(2.0, 1.0, 5, min_p=0.99), 10)) == {1}
    assert len(set(draws(make_seeded_sampler(2.0, 1.0, 5), 40))) > 2


def test_processors_only_for_what_was_asked():
    assert processors_of(SamplingParams(8)) == []
    asked = SamplingParams(8, presence_penalty=0.5, frequency_penalty=0.5, repetition_penalty=1.3, logit_bias=((1, -100.0),))
    processors = processors_of(asked)
    assert len(processors) == 4
    logits = mx.array([[0.0, 5.0, 0.0, 0.0]])
    assert int(mx.argmax(processors[0](mx.array([0]), logits), axis=-1).item()) != 1  # the bias comes first


def test_token_logprob_reports_the_token_and_the_top_alternatives_most_likely_first():
    values = np.log(np.array([0.1, 0.5, 0.3, 0.1]))
    entry = token_logprob(values, 2, 3, lambda t: f"t{t}".encode())
    assert (entry.token, entry.bytes) == ("t2", list(b"t2")) and abs(entry.logprob - np.log(0.3)) < 1e-9
    assert [t.token for t in entry.top] == ["t1", "t2", "t0"]  # the tie (0 and 3) goes to the lower id
    assert token_logprob(np.array([0.0, -np.inf]), 1, 0, lambda t: b"x").logprob == -9999.0
