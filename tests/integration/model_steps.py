"""Helpers of the tests that drive the real model in-process: greedy steps straight through the model, and a
batch run through the engine to its end."""

from __future__ import annotations

import mlx.core as mx
from mlx import nn
from mlx_lm.models.cache import make_prompt_cache

from services.worker.runner.serve.control import Control, Submit
from services.worker.runner.serve.engine import Engine, Step


def greedy(model: nn.Module, steps: int, prompt: list[int]) -> tuple[list[int], list[mx.array]]:
    """`steps` greedy tokens after `prompt`, and the logits row each was chosen from."""
    cache = make_prompt_cache(model)
    logits = model(mx.array([prompt]), cache=cache)[:, -1, :]
    tokens, rows = [], []
    for _ in range(steps):
        token = mx.argmax(logits, axis=-1)
        tokens.append(token.item())
        rows.append(logits)
        logits = model(token[:, None], cache=cache)[:, -1, :]
    return tokens, rows


def run_batch(engine: Engine, submits: list[Submit]) -> dict[str, list[Step]]:
    """Submit every request in one control, then step until the batch is empty; every step of each request."""
    steps, _cached = engine.run_cycle(Control(submits))
    out: dict[str, list[Step]] = {s.request_id: [] for s in submits}
    while True:
        for step in steps:
            out[step.request_id].append(step)
        if not engine.busy:
            return out
        steps = engine.step()


def text(steps: list[Step]) -> str:
    return "".join(s.text for s in steps)
