"""Decode tokens/s with a grammar (a JSON schema with nested objects and arrays) over without, batch 1 and 8, in
one run of one in-process engine on the real model (SmolLM2-135M, f32 import). The goal (issue 12) is >= 0.9.

    .venv/bin/python -m bench.grammar [--tokens 48]

Decode rate: the tokens after each batch's first step over the time after it (the first step holds the prefill)."""

from __future__ import annotations

import argparse
import json
import tempfile
import time

from services.worker.models.store import ModelStore
from services.worker.runner.serve.control import Control, Submit
from services.worker.runner.serve.engine import Engine
from shared.generation import ChatMessage, GenerateRequest, SamplingParams
from shared.models import get_card

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "address": {"type": "object", "properties": {"city": {"type": "string"}, "tags": {"type": "array", "items": {"type": "string"}}},
                    "required": ["city", "tags"]},
        "orders": {"type": "array", "items": {"type": "object", "properties": {"id": {"type": "integer"},
                   "items": {"type": "array", "items": {"type": "object", "properties": {"sku": {"type": "string"}, "qty": {"type": "number"}}}}}}},
    },
    "required": ["name", "address", "orders"],
}  # fmt: skip


def decode_rate(engine: Engine, batch: int, tokens: int, grammar: bool) -> float:
    ask = (ChatMessage("user", "Describe a customer and their orders as JSON."),)
    sampling = SamplingParams(max_tokens=tokens, temperature=0.8, seed=1)
    submits = []
    for i in range(batch):
        prompt = engine.prompt_tokens(GenerateRequest(f"r{i}", "smollm2-135m", sampling, messages=ask))
        submits.append(Submit(f"r{i}-{grammar}", prompt, sampling, json.dumps(SCHEMA) if grammar else None))
    steps, _ = engine.run_cycle(Control(submits))
    while len(steps) < batch and engine.busy:  # until every request has its first token
        steps += engine.step()
    start, count = time.perf_counter(), 0
    while engine.busy:
        count += len(engine.step())
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=48)
    args = parser.parse_args()
    from mlx_lm import load

    path = ModelStore(__import__("pathlib").Path(tempfile.mkdtemp())).ensure(get_card("smollm2-135m"), "f32")
    model, tokenizer = load(str(path))
    engine = Engine(model, tokenizer)
    engine.grammars.check(json.dumps(SCHEMA))  # the one-off tokenizer conversion, outside the timings
    for batch in (1, 8):
        plain = decode_rate(engine, batch, args.tokens, grammar=False)
        constrained = decode_rate(engine, batch, args.tokens, grammar=True)
        print(f"batch {batch}: plain {plain:.1f} tok/s, grammar {constrained:.1f} tok/s, ratio {constrained / plain:.2f}")


if __name__ == "__main__":
    main()
