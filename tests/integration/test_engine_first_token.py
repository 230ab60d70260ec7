"""A request alone gets its first token from the cycle that admits it: the engine runs its prompt in one forward
pass and the batch goes on from that token (Engine._first_token). In-process on the real model with MLX's bundled
reference BLAS, so the tokens equal the batch's own (tests/integration/test_engine_determinism.py)."""

from __future__ import annotations

import json

import jsonschema
import pytest

from services.worker.runner.serve.control import Control, Submit
from services.worker.runner.serve.engine import ONE_PASS_MAX_TOKENS, Engine, Step
from shared.generation import GenerateRequest, SamplingParams
from tests.integration.model_steps import greedy, run_batch, text
from tests.shared_models import SharedModels

pytestmark = pytest.mark.slow

PROMPTS = {
    "a": "The three colours of the flag of France are",
    "b": "Once upon a time, a dragon",
    # more tokens than one pass takes (ONE_PASS_MAX_TOKENS): all but the last in a pass of their own
    "long": "Counting slowly from one up to twenty, in words, with commas between: one, two, three, four, five,",
}
GREEDY = SamplingParams(max_tokens=12, temperature=0.0)
SEEDED = SamplingParams(max_tokens=12, temperature=1.0, seed=4321)


@pytest.fixture(scope="module")
def engine_parts(shared_models: SharedModels):
    from mlx_lm import load

    return load(str(shared_models.path("f32")))


def prompt_of(engine: Engine, rid: str) -> list[int]:
    return engine.prompt_tokens(GenerateRequest(rid, "smollm2-135m", GREEDY, prompt=PROMPTS[rid]))


@pytest.mark.parametrize("rid", ["a", "long"])
def test_a_request_alone_has_its_first_token_from_the_admitting_cycle_and_the_batchs_text(engine_parts, rid) -> None:
    model, tokenizer = engine_parts
    engine = Engine(model, tokenizer)
    prompt = prompt_of(engine, rid)
    assert (len(prompt) > ONE_PASS_MAX_TOKENS) == (rid == "long")
    steps, _ = engine.run_cycle(Control([Submit("a", prompt, GREEDY)]))
    assert [(s.request_id, s.completion_tokens) for s in steps] == [("a", 1)]
    out = [*steps]
    while engine.busy:
        out += engine.step()
    assert out[-1].finish_reason == "length" and out[-1].completion_tokens == GREEDY.max_tokens
    tokens, _rows = greedy(model, GREEDY.max_tokens, prompt)  # type: ignore[arg-type]
    assert text(out) == tokenizer.decode(tokens).lstrip()  # the streaming detokenizer drops a leading space

    # Two newcomers in one cycle take the batch's way (a prefill step before any token), with the same text.
    batch = Engine(model, tokenizer)
    first, _ = batch.run_cycle(Control([Submit("a", prompt, GREEDY), Submit("b", prompt_of(batch, "b"), SEEDED)]))
    assert first == []
    rest: dict[str, list[Step]] = {"a": [], "b": []}
    while batch.busy:
        for step in batch.step():
            rest[step.request_id].append(step)
    assert text(rest["a"]) == text(out)

    # A seeded request alone draws the same tokens as in that batch.
    alone = run_batch(Engine(model, tokenizer), [Submit("b", prompt_of(engine, "b"), SEEDED)])["b"]
    assert text(alone) == text(rest["b"])


def test_one_token_ends_at_once_and_the_same_prompt_again_reuses_the_whole_cached_prompt(engine_parts) -> None:
    model, tokenizer = engine_parts
    engine = Engine(model, tokenizer)
    prompt = prompt_of(engine, "a")
    one = SamplingParams(max_tokens=1, temperature=0.0)
    steps, cached = engine.run_cycle(Control([Submit("a1", prompt, one)]))
    assert [(s.completion_tokens, s.finish_reason) for s in steps] == [(1, "length")]
    assert cached["a1"] == 0 and not engine.busy and not engine.active and not engine.uids
    # The prefix cache now holds exactly the prompt: an exact hit feeds its last token again for the logits.
    again, cached = engine.run_cycle(Control([Submit("a2", prompt, one)]))
    assert cached["a2"] == len(prompt) - 1
    assert [(s.text, s.finish_reason) for s in again] == [(steps[0].text, "length")]


def test_a_stop_string_in_the_first_token_ends_the_request_with_no_text(engine_parts) -> None:
    model, tokenizer = engine_parts
    engine = Engine(model, tokenizer)
    prompt = prompt_of(engine, "a")
    (first,), _ = engine.run_cycle(Control([Submit("a", prompt, GREEDY)]))
    engine.cancel("a")
    stop = first.text.strip()
    assert stop
    out = run_batch(Engine(model, tokenizer), [Submit("s", prompt, SamplingParams(12, temperature=0.0, stop=(stop,)))])
    (step,) = out["s"]
    assert step.finish_reason == "stop" and step.stop_sequence == stop and stop not in step.text


def test_logprobs_and_a_grammar_hold_from_the_first_token(engine_parts) -> None:
    model, tokenizer = engine_parts
    engine = Engine(model, tokenizer)
    logprobs = SamplingParams(max_tokens=6, temperature=0.0, logprobs=True, top_logprobs=3)
    out = run_batch(engine, [Submit("l", prompt_of(engine, "a"), logprobs)])["l"]
    assert sum(len(s.logprobs or []) for s in out) == out[-1].completion_tokens == 6
    assert all(len(lp.top) == 3 for s in out for lp in s.logprobs or [])

    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"], "additionalProperties": False}
    forced = SamplingParams(max_tokens=30, temperature=1.0, seed=3)
    steps: list[Step] = run_batch(engine, [Submit("g", prompt_of(engine, "b"), forced, json.dumps(schema))])["g"]
    assert steps[-1].finish_reason == "stop"
    jsonschema.validate(json.loads(text(steps)), schema)


def test_a_request_cancelled_before_its_first_step_sends_no_token(engine_parts) -> None:
    model, tokenizer = engine_parts
    engine = Engine(model, tokenizer)
    engine.submit("c", prompt_of(engine, "a"), GREEDY)
    cancelled = engine.cancel("c")
    assert cancelled is not None and cancelled.finish_reason == "cancelled"
    assert engine.step() == [] and not engine.busy


def test_a_first_token_whose_text_breaks_fails_that_request_alone_and_leaves_nothing_behind(engine_parts) -> None:
    model, tokenizer = engine_parts

    class Broken(Engine):
        def _advance(self, active, response):  # noqa: ANN001, ANN202
            raise RuntimeError("injected detokenizer fault")

    engine = Broken(model, tokenizer)
    steps, _ = engine.run_cycle(Control([Submit("x", prompt_of(engine, "a"), GREEDY)]))
    assert [(s.finish_reason, "injected" in (s.error or "")) for s in steps] == [("error", True)]
    assert not engine.busy and not engine.active and not engine.uids
    assert engine.generator.next() == ([], [])  # the batch holds nothing of it
