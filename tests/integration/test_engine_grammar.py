"""A request with a JSON schema, in the engine's batch on the real model: its output parses and validates against
the schema, and three plain requests in the same batch give the text they give alone (the mask is its own)."""

from __future__ import annotations

import json

import jsonschema
import pytest

from services.worker.models.store import ModelStore
from services.worker.runner.serve.control import Submit
from services.worker.runner.serve.engine import Engine, Step
from shared.generation import ChatMessage, GenerateRequest, SamplingParams
from shared.models import get_card
from tests.integration.model_steps import run_batch, text

pytestmark = pytest.mark.slow

PLAIN = {"a": "The three colours of the flag of France are", "b": "Once upon a time, a dragon", "c": "The sea is"}
GREEDY = SamplingParams(max_tokens=8, temperature=0.0)
SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 12},
        "rank": {"type": "integer", "minimum": 0, "maximum": 99},
        "tags": {"type": "array", "items": {"enum": ["old", "big", "wet"]}, "maxItems": 2},
        "sea": {"type": "boolean"},
    },
    "required": ["city", "rank", "tags", "sea"],
    "additionalProperties": False,
}
BOUND = 60  # tokens: the schema's longest output is well under this


@pytest.fixture(scope="module")
def engine_parts(tmp_path_factory: pytest.TempPathFactory):
    from mlx_lm import load

    path = ModelStore(tmp_path_factory.mktemp("models")).ensure(get_card("smollm2-135m"), "f32")
    return load(str(path))


def submit_of(engine: Engine, rid: str) -> Submit:
    if rid == "g":
        ask = (ChatMessage("user", "Describe Paris as JSON."),)
        prompt = engine.prompt_tokens(GenerateRequest(rid, "smollm2-135m", GREEDY, messages=ask))
        sampling = SamplingParams(max_tokens=BOUND, temperature=1.0, seed=7)
        return Submit(rid, prompt, sampling, json.dumps(SCHEMA))
    return Submit(rid, engine.prompt_tokens(GenerateRequest(rid, "smollm2-135m", GREEDY, prompt=PLAIN[rid])), GREEDY)


def run(engine: Engine, rids: list[str]) -> dict[str, list[Step]]:
    return run_batch(engine, [submit_of(engine, rid) for rid in rids])


def test_a_grammar_request_in_a_batch_validates_and_leaves_the_plain_ones_unchanged(engine_parts) -> None:
    model, tokenizer = engine_parts
    alone = {rid: text(run(Engine(model, tokenizer), [rid])[rid]) for rid in PLAIN}
    out = run(Engine(model, tokenizer), ["a", "g", "b", "c"])
    for rid in PLAIN:
        assert text(out[rid]) == alone[rid], rid
        assert out[rid][-1].finish_reason == "length"
    assert out["g"][-1].finish_reason == "stop", out["g"]  # the grammar ended it, not max_tokens
    jsonschema.validate(json.loads(text(out["g"])), SCHEMA)


def test_a_schema_the_library_cannot_compile_is_named(engine_parts) -> None:
    model, tokenizer = engine_parts
    grammars = Engine(model, tokenizer).grammars
    assert grammars.check(json.dumps(SCHEMA)) is None
    assert grammars.check('{"type": "object", "properties": {"x": {"type": "frobnicate"}}}') is not None
    assert grammars.check("not json") is not None
