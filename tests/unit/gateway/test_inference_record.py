"""What the gateway records of a request: the runner's account when it came, its own measurements otherwise;
and the metrics' pure parts (runner restarts) and `exo log`'s table."""

from __future__ import annotations

import asyncio

from services.gateway.errors import OpenAIError
from services.gateway.inference_recorder import CLIENT_GONE, Observation, api_of, build_record, status_of
from services.gateway.metrics import RunnerRestarts
from services.node.log_cli import render_log, render_table
from shared.events import RunnerStatusChanged
from shared.generation import ChatMessage, FinishedRequest, GenerateRequest, SamplingParams, TokenChunk
from shared.inference_log import InferenceRows

CHAT = GenerateRequest("chatcmpl-1", "smollm2-135m", SamplingParams(max_tokens=8, seed=42),
                       messages=(ChatMessage("user", "hi"),))  # fmt: skip
TEXT = GenerateRequest("cmpl-1", "smollm2-135m", SamplingParams(max_tokens=8), prompt="Once")


def chunk(index: int, tokens: int, finished: FinishedRequest | None = None) -> TokenChunk:
    return TokenChunk("chatcmpl-1", index, "x", tokens, 9, finish_reason=finished and finished.finish_reason,
                      finished=finished)  # fmt: skip


def test_the_api_follows_the_request_shape() -> None:
    assert (api_of(CHAT), api_of(TEXT)) == ("chat.completions", "completions")


def test_observation_times_first_token_and_gaps() -> None:
    obs = Observation(started=10.0)
    assert obs.see(TokenChunk("r", -1, "", 0, 9), 10.1) == (None, None, 0)  # the submit: prompt tokens only
    assert obs.see(TokenChunk("r", 0, "", 0, 9), 10.5) == (None, None, 0)  # a keep-alive
    ttft, gap, new = obs.see(TokenChunk("r", 1, "a", 1, 9), 11.0)
    assert (ttft, gap, new) == (1.0, None, 1)
    ttft, gap, new = obs.see(TokenChunk("r", 2, "bc", 3, 9), 11.5)
    assert (ttft, round(gap, 3), new) == (None, 0.5, 2)
    assert (obs.prompt_tokens, obs.completion_tokens) == (9, 3)


def test_a_finished_request_is_recorded_from_the_runners_account() -> None:
    finished = FinishedRequest("length", 42, 9, 3, 8, 0.25, 1.0, 28.0, "tensor", 2)
    obs = Observation(started=100.0)
    obs.see(chunk(0, 8, finished), 101.0)
    record = build_record(CHAT, "inst-1", obs, 101.2, 1_790_000_000.0, 200, None, True, (1, "pipeline"))
    assert record.id == "chatcmpl-1" and record.api == "chat.completions" and record.stream is True
    assert (record.prompt_tokens, record.cached_tokens, record.completion_tokens) == (9, 3, 8)
    assert record.time_to_first_token_ms == 250.0 and record.decode_tokens_per_s == 28.0
    assert round(record.latency_ms, 3) == 1200.0  # the gateway's: what the client waited
    assert (record.devices, record.strategy, record.seed, record.trit) == (2, "tensor", 42, 0)
    assert (record.status, record.finish_reason, record.error) == (200, "length", None)


def test_a_request_refused_at_submit_never_ran() -> None:
    obs = Observation(started=5.0)
    status, error = status_of(OpenAIError(400, "the prompt is empty", code="invalid_request"))
    record = build_record(TEXT, "inst-1", obs, 5.01, 1.0, status, error, False, (1, "pipeline"))
    assert (record.status, record.finish_reason, record.error) == (400, None, "the prompt is empty")
    assert (record.completion_tokens, record.time_to_first_token_ms, record.seed) == (0, None, None)
    assert (record.devices, record.strategy) == (1, "pipeline")  # the instance it reached


def test_a_request_that_failed_mid_way_keeps_what_the_gateway_saw() -> None:
    obs = Observation(started=0.0)
    obs.see(TokenChunk("r", -1, "", 0, 9), 0.1)
    obs.see(TokenChunk("r", 0, "a", 1, 9), 1.0)
    obs.see(TokenChunk("r", 1, "b", 3, 9), 2.0)
    status, error = status_of(OpenAIError(502, "generation failed: rank 0 failed", "server_error"))
    record = build_record(CHAT, "inst-1", obs, 2.5, 1.0, status, error, True, (2, "pipeline"))
    assert (record.status, record.finish_reason) == (502, "error")
    assert (record.prompt_tokens, record.completion_tokens) == (9, 3)
    assert record.time_to_first_token_ms == 1000.0
    assert record.decode_tokens_per_s == 2.0  # two tokens after the first, over one second
    assert record.seed == 42  # the one the client asked for


def test_a_client_that_went_away_is_a_cancelled_499() -> None:
    assert status_of(asyncio.CancelledError())[0] == CLIENT_GONE
    assert status_of(GeneratorExit())[0] == CLIENT_GONE
    obs = Observation(started=0.0)
    obs.see(TokenChunk("r", -1, "", 0, 9), 0.1)
    record = build_record(CHAT, "inst-1", obs, 1.0, 1.0, *status_of(asyncio.CancelledError()), False, (1, "pipeline"))
    assert (record.status, record.finish_reason) == (499, "cancelled")
    assert status_of(None) == (200, None)
    assert status_of(ValueError("boom")) == (500, "ValueError: boom")


def status(phase: str, rank: int = 0) -> RunnerStatusChanged:
    return RunnerStatusChanged("inst-1", "node-a", rank, phase)  # type: ignore[arg-type]


def test_runner_restarts_count_starts_after_ready() -> None:
    restarts = RunnerRestarts()
    for phase in ("importing", "loading", "loading", "ready"):  # the first start is no restart
        restarts.see(status(phase))
    assert restarts.count == 0
    for phase in ("failed", "loading", "loading", "ready", "stopped", "importing", "ready"):
        restarts.see(status(phase))
    assert restarts.count == 2
    restarts.see(status("loading", rank=1))  # another runner's first start
    assert restarts.count == 2


def test_exo_log_prints_oldest_first_with_readable_cells() -> None:
    rows = InferenceRows(
        columns=("timestamp", "id", "model", "latency_ms", "seed", "error"),
        rows=(("2026-11-29T22:42:16.913745", "cmpl-2", "m", 1752.95, 7, None),
              ("2026-11-29T22:42:14.100000", "cmpl-1", "m", 4.25, None, "x")),
    )  # fmt: skip
    lines = render_log(rows).splitlines()
    assert lines[0].split() == ["TIME", "(UTC)", "ID", "MODEL", "LATENCY", "ms", "SEED"]
    assert lines[1].split() == ["2026-11-29", "22:42:14", "cmpl-1", "m", "4.25", "-"]
    assert lines[2].split() == ["2026-11-29", "22:42:16", "cmpl-2", "m", "1753.0", "7"]
    assert render_log(InferenceRows(columns=("id",))) == "no inference recorded yet"
    assert render_table(["a", "bb"], [[1, None]]) == "a  bb\n1  -"
