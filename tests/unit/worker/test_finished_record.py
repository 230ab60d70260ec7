"""The record a finished request carries on its last chunk (services/worker/runner/serve/server.py's Stream), on plain
times; a real request's record is checked in tests/integration/test_engine.py."""

from __future__ import annotations

from services.worker.runner.serve.server import Stream
from shared.generation import GenerateRequest, SamplingParams


def stream(completion_tokens: int, first_token_at: float | None, seed: int | None = 77) -> Stream:
    sampling = SamplingParams(max_tokens=20, temperature=0.8, seed=seed)
    s = Stream(GenerateRequest("req-1", "m", sampling, prompt="x"), [1, 2, 3, 4], sampling)
    s.admitted_at, s.first_token_at, s.completion_tokens, s.cached_tokens = 100.0, first_token_at, completion_tokens, 2
    return s


def test_times_and_rates_from_admission_first_token_and_end():
    record = stream(11, 100.5).finished("length", "tensor", 3, now=102.5)
    assert record.finish_reason == "length" and record.seed == 77
    assert (record.prompt_tokens, record.cached_tokens, record.completion_tokens) == (4, 2, 11)
    assert record.time_to_first_token_s == 0.5 and record.total_s == 2.5
    assert record.decode_tokens_per_s == 5.0  # 10 tokens after the first, in 2 s
    assert (record.strategy, record.device_count) == ("tensor", 3)


def test_no_token_no_first_token_time_nor_rate():
    record = stream(0, None).finished("cancelled", "pipeline", 1, now=101.0)
    assert record.time_to_first_token_s is None and record.decode_tokens_per_s is None
    assert record.total_s == 1.0 and record.completion_tokens == 0


def test_one_token_has_no_decode_rate():
    record = stream(1, 100.2, seed=None).finished("stop", "pipeline", 1, now=100.2)
    assert record.decode_tokens_per_s is None and record.time_to_first_token_s == 0.2 and record.seed is None
