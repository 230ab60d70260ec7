"""One request's failure is its own: the engine, in-process on the real model, takes a failing sequence out of
its running batch and the others finish with the text they give alone.

The faults are injected into one request's own parts (its detokenizer, its sampler) of a real engine, since
nothing a client can send makes them fail any more; an empty prompt reaches the generator only past
admission, as it did before admission refused it. MLX's bundled reference BLAS runs in this process, so a
batch computes the same tokens as one request alone (tests/integration/test_engine_determinism.py)."""

from __future__ import annotations

import mlx.core as mx
import pytest

from services.worker.models.store import ModelStore
from services.worker.runner.serve.control import Control, Submit
from services.worker.runner.serve.engine import Engine, Step
from shared.generation import GenerateRequest, SamplingParams
from shared.models import get_card
from tests.integration.model_steps import run_batch, text

pytestmark = pytest.mark.slow

# Plain text prompts, short: prefill with the reference BLAS is slow (a chat template adds ~30 tokens to each).
QUESTIONS = {
    "a": "The three colours of the flag of France are",
    "b": "Once upon a time, a dragon",
    "c": "Counting from one: one, two,",
    "d": "The sea is",
}
GREEDY = SamplingParams(max_tokens=10, temperature=0.0)
SEEDED = SamplingParams(max_tokens=10, temperature=1.0, seed=1234)  # the sampler path, not only argmax


@pytest.fixture(scope="module")
def engine_parts(tmp_path_factory: pytest.TempPathFactory):
    from mlx_lm import load

    path = ModelStore(tmp_path_factory.mktemp("models")).ensure(get_card("smollm2-135m"), "f32")
    return load(str(path))


def prompt(engine: Engine, rid: str) -> list[int]:
    return engine.prompt_tokens(GenerateRequest(rid, "smollm2-135m", GREEDY, prompt=QUESTIONS[rid]))


def sampling_of(rid: str) -> SamplingParams:
    return SEEDED if rid == "b" else GREEDY


def run(engine: Engine, rids: list[str], prompts: dict[str, list[int]] | None = None) -> dict[str, list[Step]]:
    """Submit every request in one control, then step until the batch is empty; every step of each request."""
    prompts = prompts or {}
    submits = [Submit(rid, prompts[rid] if rid in prompts else prompt(engine, rid), sampling_of(rid)) for rid in rids]
    return run_batch(engine, submits)


@pytest.fixture(scope="module")
def alone(engine_parts) -> dict[str, str]:
    model, tokenizer = engine_parts
    return {rid: text(run(Engine(model, tokenizer), [rid])[rid]) for rid in QUESTIONS}


def assert_the_others_finished_as_alone(out: dict[str, list[Step]], alone: dict[str, str], victim: str) -> None:
    for rid, steps in out.items():
        if rid == victim:
            continue
        assert steps[-1].finish_reason in ("stop", "length"), (rid, steps[-1])
        assert all(s.error is None for s in steps), (rid, steps)
        assert text(steps) == alone[rid], rid


class FailsOnToken:
    """A request's detokenizer that breaks on its n-th token (the real one does the work until then)."""

    def __init__(self, real, n: int) -> None:  # noqa: ANN001
        self.real, self.n, self.seen = real, n, 0

    def add_token(self, token: int) -> None:
        self.seen += 1
        if self.seen == self.n:
            raise RuntimeError("injected detokenizer fault")
        self.real.add_token(token)

    def __getattr__(self, name: str):  # noqa: ANN204
        return getattr(self.real, name)


def test_a_request_that_fails_mid_batch_leaves_the_batch_and_the_others_finish(engine_parts, alone) -> None:
    model, tokenizer = engine_parts
    engine = Engine(model, tokenizer)
    victim = "c"
    submits = [Submit(rid, prompt(engine, rid), sampling_of(rid)) for rid in QUESTIONS]
    steps, _ = engine.run_cycle(Control(submits))
    assert len(engine.active) == 4
    faulty = next(a for a in engine.active.values() if a.request_id == victim)
    faulty.detokenizer = FailsOnToken(faulty.detokenizer, 3)
    out: dict[str, list[Step]] = {rid: [] for rid in QUESTIONS}
    while True:
        for step in steps:
            out[step.request_id].append(step)
        if not engine.busy:
            break
        steps = engine.step()
    failed = out[victim][-1]
    assert failed.finish_reason == "error"
    assert failed.error is not None and "injected detokenizer fault" in failed.error
    assert failed.completion_tokens == 3
    assert [s.finish_reason for s in out[victim]].count("error") == 1
    assert victim not in engine.uids and not engine.active
    assert_the_others_finished_as_alone(out, alone, victim)


class SamplerFails(Engine):
    """An engine whose sampler for one request raises at its 4th token."""

    victim = "a"

    def _sampler(self, sampling: SamplingParams, first_step: int = 0):  # noqa: ANN202
        real = super()._sampler(sampling, first_step)
        if sampling is not self.victim_sampling:
            return real
        calls = 0

        def sample(logprobs: mx.array) -> mx.array:
            nonlocal calls
            calls += 1
            if calls == 4:
                raise ValueError("injected sampler fault")
            return real(logprobs)

        return sample


def test_a_sampler_that_raises_fails_its_request_only(engine_parts, alone) -> None:
    model, tokenizer = engine_parts
    engine = SamplerFails(model, tokenizer)
    victim = SamplerFails.victim
    engine.victim_sampling = SamplingParams(max_tokens=10, temperature=0.0, stop=("never seen",))  # its own object
    prompts = {rid: prompt(engine, rid) for rid in QUESTIONS}
    submits = [Submit(rid, prompts[rid], engine.victim_sampling if rid == victim else sampling_of(rid))
               for rid in QUESTIONS]  # fmt: skip
    steps, _ = engine.run_cycle(Control(submits))
    out: dict[str, list[Step]] = {rid: [] for rid in QUESTIONS}
    while True:
        for step in steps:
            out[step.request_id].append(step)
        if not engine.busy:
            break
        steps = engine.step()
    failed = out[victim][-1]
    assert failed.finish_reason == "error" and "injected sampler fault" in (failed.error or "")
    assert failed.completion_tokens == 3  # the 4th token's draw failed: its first 3 tokens came
    assert_the_others_finished_as_alone(out, alone, victim)


def test_an_empty_prompt_that_reaches_the_generator_fails_alone(engine_parts, alone) -> None:
    model, tokenizer = engine_parts
    engine = Engine(model, tokenizer)
    out = run(engine, ["a", "empty", "b"], prompts={"empty": []})
    (failed,) = out["empty"]
    assert failed.finish_reason == "error" and "empty prompt" in (failed.error or "")
    assert_the_others_finished_as_alone({"a": out["a"], "b": out["b"]}, alone, "empty")
