"""Helpers of the tests that drive the real model in-process: greedy steps straight through the model, the same
text teacher-forced through another, and a batch run through the engine to its end."""

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


def forced(model: nn.Module, prompt: list[int], tokens: list[int]) -> list[mx.array]:
    """The logits row before each of `tokens` when the model is fed `prompt` then `tokens` one at a time
    (teacher forcing): two models compared step by step on the same text, not on texts that part at a near-tie."""
    cache = make_prompt_cache(model)
    rows = [model(mx.array([prompt]), cache=cache)[:, -1, :]]
    for token in tokens[:-1]:
        rows.append(model(mx.array([[token]]), cache=cache)[:, -1, :])
    return rows


def agreement(expected_tokens: list[int], expected: list[mx.array], got: list[mx.array]) -> dict[str, float]:
    """How a model's logits (`got`, teacher-forced on `expected_tokens`) compare with the ones those tokens were
    chosen from: the steps whose argmax differs, the widest top-2 margin (of `expected`, over its standard
    deviation) among them, and the worst max and mean difference over the standard deviation."""
    parted, widest = 0, 0.0
    for token, a, b in zip(expected_tokens, expected, got):
        if int(mx.argmax(b, axis=-1).item()) != token:
            parted += 1
            top = mx.sort(a[0])[-2:]
            widest = max(widest, float((top[1] - top[0]) / a.std()))
    worst_max = max(float(mx.abs(a - b).max() / a.std()) for a, b in zip(expected, got))
    worst_mean = max(float(mx.abs(a - b).mean() / a.std()) for a, b in zip(expected, got))
    return {"parted": parted, "widest_margin": widest, "worst_max": worst_max, "worst_mean": worst_mean}


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
