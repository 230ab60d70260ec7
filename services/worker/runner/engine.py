"""The model side of a runner: load with mlx-lm, turn a request into prompt tokens, generate steps."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import mlx.core as mx
import msgspec
from mlx_lm import load, stream_generate
from mlx_lm.sample_utils import make_sampler

from shared.generation import GenerateRequest, SamplingParams

from services.worker.runner.stops import StopMatcher


class Step(msgspec.Struct, frozen=True):
    text: str
    completion_tokens: int
    finish_reason: str | None  # "stop" | "length" | None


class Engine:
    def __init__(self, model_path: Path) -> None:
        self.model, self.tokenizer = load(str(model_path))

    def prompt_tokens(self, request: GenerateRequest) -> list[int]:
        if request.messages is not None:
            messages = [{"role": m.role, "content": m.content} for m in request.messages]
            return list(self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True))
        return list(self.tokenizer.encode(request.prompt or ""))

    def generate(self, prompt: list[int], sampling: SamplingParams) -> Iterator[Step]:
        if sampling.seed is not None:
            mx.random.seed(sampling.seed)
        sampler = make_sampler(temp=sampling.temperature, top_p=sampling.top_p if sampling.top_p < 1.0 else 0.0)
        stops = StopMatcher(sampling.stop)
        count = 0
        for response in stream_generate(
            self.model, self.tokenizer, mx.array(prompt), max_tokens=sampling.max_tokens, sampler=sampler
        ):
            count = response.generation_tokens
            text, stopped = stops.feed(response.text)
            if stopped:
                yield Step(text, count, "stop")
                return
            if response.finish_reason is not None:
                yield Step(text + stops.flush(), count, response.finish_reason)
                return
            yield Step(text, count, None)
        yield Step(stops.flush(), count, "length")
