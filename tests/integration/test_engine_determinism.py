"""The engine's seed schedule, in-process with MLX's bundled reference BLAS (no preload in the test process):
a seeded request gives the same tokens alone and inside a batch of other requests, greedy too. With a fast
BLAS, kernels chosen by the batch's row count round differently (see tests/integration/test_engine.py)."""

from __future__ import annotations


import pytest

from services.worker.runner.blas import current_blas
from services.worker.runner.serve.engine import Engine
from shared.generation import ChatMessage, GenerateRequest, SamplingParams
from tests.shared_models import SharedModels


@pytest.fixture(scope="module")
def engine_parts(shared_models: SharedModels):
    from mlx_lm import load

    return load(str(shared_models.path("f32")))


def run(engine: Engine, requests: list[tuple[str, str, SamplingParams]]) -> dict[str, str]:
    out = {}
    for rid, question, sampling in requests:
        chat = GenerateRequest(rid, "smollm2-135m", sampling, messages=(ChatMessage("user", question),))
        engine.submit(rid, engine.prompt_tokens(chat), sampling)
        out[rid] = ""
    while engine.busy:
        for step in engine.step():
            out[step.request_id] += step.text
    return out


def test_seeded_and_greedy_tokens_do_not_depend_on_the_batch(engine_parts) -> None:
    assert current_blas() == "reference"
    model, tokenizer = engine_parts
    seeded = SamplingParams(16, temperature=1.0, seed=1234)
    greedy = SamplingParams(16, temperature=0.0)
    alone = run(Engine(model, tokenizer), [("s", "Invent a name for a cat.", seeded)])["s"]
    alone_greedy = run(Engine(model, tokenizer), [("g", "Name three colours.", greedy)])["g"]
    noise = [(f"n{i}", f"Say something random {i}.", SamplingParams(16, temperature=1.0, seed=100 + i)) for i in range(3)]
    busy = run(Engine(model, tokenizer), [("s", "Invent a name for a cat.", seeded), ("g", "Name three colours.", greedy), *noise])
    assert busy["s"] == alone
    assert busy["g"] == alone_greedy
    assert run(Engine(model, tokenizer), [("s", "Invent a name for a cat.", SamplingParams(16, 1.0, seed=99))])["s"] != alone
