"""Admission of generate requests (services/worker/runner/serve/admission.py), on plain data: a "tokenizer" that gives
one token per word stands in for the model's, which the integration tests use."""

from __future__ import annotations

import msgspec
import pytest

from services.worker.runner.serve.admission import Admitted, Limits, admit
from shared.generation import ChatMessage, GenerateRejected, GenerateRequest, SamplingParams, Speculation

LIMITS = Limits(context_length=10, max_admitted=3)
FRESH_SEED = 987654321


def words(request: GenerateRequest) -> list[int]:
    text = request.prompt if request.messages is None else " ".join(m.content for m in request.messages)
    return list(range(len((text or "").split())))


def text(prompt: str, **sampling) -> GenerateRequest:  # noqa: ANN003
    return GenerateRequest("req-1", "m", SamplingParams(**({"max_tokens": 2} | sampling)), prompt=prompt)


def chat(content: str, **sampling) -> GenerateRequest:  # noqa: ANN003
    messages = (ChatMessage("user", content),)
    return GenerateRequest("req-1", "m", SamplingParams(**({"max_tokens": 2} | sampling)), messages=messages)


def rejected(decision: object, code: str) -> GenerateRejected:
    assert isinstance(decision, GenerateRejected), decision
    assert decision.code == code, decision
    assert decision.request_id == "req-1"
    return decision


def test_a_request_that_fits_is_admitted_with_its_prompt():
    decision = admit(text("one two three"), 0, LIMITS, words, FRESH_SEED)
    assert isinstance(decision, Admitted)
    assert decision.prompt == [0, 1, 2]
    assert decision.sampling.max_tokens == 2
    assert decision.request.request_id == "req-1"


def test_busy_when_the_runner_holds_as_many_as_it_admits():
    assert isinstance(admit(text("a"), 2, LIMITS, words, FRESH_SEED), Admitted)
    busy = rejected(admit(text("a"), 3, LIMITS, words, FRESH_SEED), "busy")
    assert busy.retry_after is not None and busy.retry_after > 0
    assert "3 requests" in busy.message


def test_busy_is_decided_before_the_prompt_is_built():
    def never(_request: GenerateRequest) -> list[int]:
        raise AssertionError("tokenized a request that was refused as busy")

    rejected(admit(text("a"), 3, LIMITS, never, FRESH_SEED), "busy")


@pytest.mark.parametrize("prompt", ["", "   "])
def test_an_empty_prompt_is_refused_for_that_request(prompt: str):
    refused = rejected(admit(text(prompt), 0, LIMITS, words, FRESH_SEED), "invalid_request")
    assert refused.param == "prompt"
    assert "empty" in refused.message


def test_an_empty_chat_prompt_names_the_messages():
    refused = rejected(admit(chat(""), 0, LIMITS, words, FRESH_SEED), "invalid_request")
    assert refused.param == "messages"


def test_a_prompt_that_cannot_be_built_is_refused_with_the_reason():
    def template_refuses(_request: GenerateRequest) -> list[int]:
        raise ValueError("roles must alternate")

    refused = rejected(admit(chat("hi"), 0, LIMITS, template_refuses, FRESH_SEED), "invalid_request")
    assert "roles must alternate" in refused.message


def test_prompt_plus_max_tokens_beyond_the_context():
    assert isinstance(admit(text("w " * 8, max_tokens=2), 0, LIMITS, words, FRESH_SEED), Admitted)  # 8 + 2 = 10
    over = rejected(admit(text("w " * 8, max_tokens=3), 0, LIMITS, words, FRESH_SEED), "context_length_exceeded")
    assert "10 tokens" in over.message and "has 8" in over.message
    assert over.param == "max_tokens"


def test_a_prompt_that_fills_the_context_leaves_no_room():
    full = rejected(admit(text("w " * 10, max_tokens=None), 0, LIMITS, words, FRESH_SEED), "context_length_exceeded")
    assert full.param == "prompt"
    rejected(admit(text("w " * 12, max_tokens=1), 0, LIMITS, words, FRESH_SEED), "context_length_exceeded")


def test_without_max_tokens_the_request_may_fill_the_context():
    decision = admit(text("w " * 4, max_tokens=None), 0, LIMITS, words, FRESH_SEED)
    assert isinstance(decision, Admitted)
    assert decision.sampling.max_tokens == 6


@pytest.mark.parametrize(
    ("sampling", "field"),
    [({"max_tokens": 0}, "max_tokens"), ({"max_tokens": -5}, "max_tokens"), ({"temperature": -0.1}, "temperature"),
     ({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p"), ({"top_k": -1}, "top_k"), ({"min_p": 2.0}, "min_p"),
     ({"repetition_penalty": 0.0}, "repetition_penalty"), ({"top_logprobs": 21}, "top_logprobs"),
     ({"logit_bias": ((-1, 1.0),)}, "logit_bias"), ({"logit_bias": ((100, 1.0),)}, "logit_bias")],  # fmt: skip
)
def test_sampling_values_no_runner_can_honour(sampling: dict, field: str):
    limits = Limits(context_length=10, max_admitted=3, vocab_size=100)
    assert rejected(admit(text("a", **sampling), 0, limits, words, FRESH_SEED), "invalid_request").param == field


def test_a_sampled_request_without_a_seed_gets_the_fresh_one():
    decision = admit(text("a", temperature=0.7), 0, LIMITS, words, FRESH_SEED)
    assert isinstance(decision, Admitted)
    assert decision.sampling.seed == FRESH_SEED


def test_a_clients_seed_is_kept():
    decision = admit(text("a", temperature=0.7, seed=42), 0, LIMITS, words, FRESH_SEED)
    assert isinstance(decision, Admitted)
    assert decision.sampling.seed == 42


def test_a_greedy_request_has_no_seed():
    decision = admit(text("a", temperature=0.0), 0, LIMITS, words, FRESH_SEED)
    assert isinstance(decision, Admitted)
    assert decision.sampling.seed is None


def test_every_sampling_value_but_the_fixed_ones_travels_unchanged():
    decision = admit(text("a b", max_tokens=3, temperature=0.5, top_p=0.9, stop=("x", "y")), 0, LIMITS, words, 7)
    assert isinstance(decision, Admitted)
    assert decision.sampling == SamplingParams(max_tokens=3, temperature=0.5, top_p=0.9, stop=("x", "y"), seed=7)


def test_a_schema_the_grammar_library_refuses_is_rejected_naming_the_field() -> None:
    request = msgspec.structs.replace(text("a b"), json_schema='{"type": "frob"}')
    refused = rejected(admit(request, 0, LIMITS, words, FRESH_SEED, lambda s: "Invalid type: frob"), "invalid_request")
    assert refused.param == "json_schema" and "frob" in refused.message
    assert isinstance(admit(request, 0, LIMITS, words, FRESH_SEED, lambda s: None), Admitted)
    # a runner without a grammar checker never runs a schema request unconstrained
    rejected(admit(request, 0, LIMITS, words, FRESH_SEED), "invalid_request")


@pytest.mark.parametrize("tokens", [0, -1, 17])
def test_a_draft_length_out_of_range_names_speculative_tokens(tokens: int):
    request = msgspec.structs.replace(text("one two"), speculative=Speculation(tokens=tokens))
    assert rejected(admit(request, 0, LIMITS, words, FRESH_SEED), "invalid_request").param == "speculative.tokens"
    fine = msgspec.structs.replace(text("one two"), speculative=Speculation(tokens=16))
    assert isinstance(admit(fine, 0, LIMITS, words, FRESH_SEED), Admitted)
