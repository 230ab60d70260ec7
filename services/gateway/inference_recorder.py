"""Each request that reached an instance, observed from its submit to its end: metrics as tokens come, and one
InferenceRecord published to the inference log's stream when it ends (any end: done, refused by the runner,
failed, abandoned by the client).

The publish is a task of its own: the client never waits on it, and a bus that is away costs a few retries,
then the record is logged (the gateway's log keeps it as JSON) rather than lost silently. Requests refused
before an instance was chosen (bad JSON, unknown model, nothing ready) are no inference: they are counted in
/metrics (exo_http_responses) and not recorded.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import msgspec
import nats.errors
import structlog
from nats.aio.client import Client as NATS

from shared import subjects
from shared.generation import GenerateRequest, TokenChunk
from shared.ids import InstanceId
from shared.inference_log import TRIT_MAIN, InferenceRecord
from shared.state import ClusterState

from services.gateway.dashboard.meter import Meter
from services.gateway.errors import OpenAIError
from services.gateway.generation_client import Generation, GenerationClient
from services.gateway.metrics import GatewayMetrics

log = structlog.get_logger()

PUBLISH_ATTEMPTS = 5
PUBLISH_RETRY_S = 2.0
MAX_INTER_TOKEN_SAMPLES = 64  # one chunk of many tokens counts as this many gaps at most
CLIENT_GONE = 499


class Observation:
    """What the gateway saw of one request (monotonic times)."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.first_token_at: float | None = None
        self.last_token_at: float | None = None
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.last: TokenChunk | None = None

    def see(self, chunk: TokenChunk, now: float) -> tuple[float | None, float | None, int]:
        """Take a chunk in; returns (time to first token if this chunk brought it, the gap since the previous
        token, the new tokens) for the metrics."""
        self.last = chunk
        self.prompt_tokens = max(self.prompt_tokens, chunk.prompt_tokens)
        new_tokens = chunk.completion_tokens - self.completion_tokens
        if new_tokens <= 0:
            return None, None, 0
        self.completion_tokens = chunk.completion_tokens
        ttft = gap = None
        if self.first_token_at is None:
            self.first_token_at = now
            ttft = now - self.started
        elif self.last_token_at is not None:
            gap = now - self.last_token_at
        self.last_token_at = now
        return ttft, gap, new_tokens


def api_of(request: GenerateRequest) -> str:
    return "chat.completions" if request.messages is not None else "completions"


def build_record(
    request: GenerateRequest, instance_id: InstanceId, obs: Observation, ended: float, ended_wall: float,
    status: int, error: str | None, stream: bool, instance_shape: tuple[int, str | None], api: str | None = None,
) -> InferenceRecord:  # fmt: skip
    """The record of one request: the runner's account (the last chunk's FinishedRequest) where it came,
    the gateway's own measurements where it did not (a refusal, an error, a client gone)."""
    finished = obs.last.finished if obs.last is not None else None
    devices, strategy = instance_shape
    if finished is not None:
        finish_reason: str | None = finished.finish_reason
        ttft_ms = None if finished.time_to_first_token_s is None else finished.time_to_first_token_s * 1000
        return InferenceRecord(
            id=request.request_id, timestamp=ended_wall, api=api or api_of(request), model=request.model_id,
            instance=instance_id, status=status, finish_reason=finish_reason, error=error,
            prompt_tokens=finished.prompt_tokens, cached_tokens=finished.cached_tokens,
            completion_tokens=finished.completion_tokens, latency_ms=(ended - obs.started) * 1000,
            time_to_first_token_ms=ttft_ms, decode_tokens_per_s=finished.decode_tokens_per_s,
            devices=finished.device_count, strategy=finished.strategy, seed=finished.seed, stream=stream,
        )  # fmt: skip
    if status == CLIENT_GONE:
        finish_reason = "cancelled"
    elif obs.last is None:
        finish_reason = None  # refused at the submit: it never ran
    else:
        finish_reason = "error"
    ttft_ms = None if obs.first_token_at is None else (obs.first_token_at - obs.started) * 1000
    decode_tps = None
    if obs.first_token_at is not None and obs.last_token_at is not None and obs.completion_tokens > 1:
        span = obs.last_token_at - obs.first_token_at
        decode_tps = (obs.completion_tokens - 1) / span if span > 0 else None
    return InferenceRecord(
        id=request.request_id, timestamp=ended_wall, api=api or api_of(request), model=request.model_id,
        instance=instance_id, status=status, finish_reason=finish_reason, error=error,
        prompt_tokens=obs.prompt_tokens, cached_tokens=obs.last.cached_tokens if obs.last else 0,
        completion_tokens=obs.completion_tokens, latency_ms=(ended - obs.started) * 1000,
        time_to_first_token_ms=ttft_ms, decode_tokens_per_s=decode_tps, devices=devices, strategy=strategy,
        seed=request.sampling.seed, stream=stream,
    )  # fmt: skip


def status_of(exc: BaseException | None) -> tuple[int, str | None]:
    """The HTTP status the client got for a request that ended with `exc` (None: it ended well)."""
    if exc is None:
        return 200, None
    if isinstance(exc, OpenAIError):
        return exc.status, exc.message
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        return CLIENT_GONE, "the client went away before the end"
    return 500, f"{type(exc).__name__}: {exc}"


class InferenceRecorder:
    def __init__(self, nc: NATS, metrics: GatewayMetrics, state: Callable[[], ClusterState], meter: Meter) -> None:
        self.nc = nc
        self.metrics = metrics
        self.meter = meter  # the dashboard's charts
        self._state = state
        self._publishing: set[asyncio.Task] = set()

    async def submit(
        self, client: GenerationClient, instance_id: InstanceId, request: GenerateRequest, stream: bool, api: str,
        trit: int = TRIT_MAIN,
    ) -> ObservedGeneration:  # fmt: skip
        """Submit through `client`; a refusal is recorded and raised, an accepted request is observed until it
        is closed."""
        obs = Observation(time.monotonic())
        self.metrics.in_flight.inc()
        self.metrics.waiting.inc()
        self.meter.started(time.time())
        try:
            generation = await client.submit(instance_id, request)
        except BaseException as exc:
            self.end(obs, request, instance_id, stream, api, exc, trit)
            raise
        return ObservedGeneration(self, generation, obs, request, stream, api, trit)

    def see(self, obs: Observation, model: str, chunk: TokenChunk) -> None:
        ttft, gap, new_tokens = obs.see(chunk, time.monotonic())
        if new_tokens:
            self.meter.tokens(time.time(), new_tokens)
        if ttft is not None:
            self.meter.first_token(time.time(), ttft)
            self.metrics.waiting.dec()
            self.metrics.ttft.labels(model).observe(ttft)
        if gap is not None:
            for _ in range(min(new_tokens, MAX_INTER_TOKEN_SAMPLES)):
                self.metrics.inter_token.labels(model).observe(gap / new_tokens)

    def end(
        self, obs: Observation, request: GenerateRequest, instance_id: InstanceId, stream: bool, api: str,
        ended_with: BaseException | None, trit: int = TRIT_MAIN,
    ) -> None:
        """The request is over, however it ended: count it and publish its record."""
        self.metrics.in_flight.dec()
        self.meter.ended(time.time(), had_first_token=obs.first_token_at is not None)
        if obs.first_token_at is None:
            self.metrics.waiting.dec()
        status, error = status_of(ended_with)
        record = build_record(request, instance_id, obs, time.monotonic(), time.time(), status, error, stream,
                              self._instance_shape(instance_id), api)  # fmt: skip
        if trit != TRIT_MAIN:
            record = msgspec.structs.replace(record, trit=trit)
        self.metrics.finished(record)
        self.publish(record)

    def _instance_shape(self, instance_id: InstanceId) -> tuple[int, str | None]:
        instance = self._state().instances.get(instance_id)
        return (instance.world_size, instance.strategy) if instance is not None else (0, None)

    def publish(self, record: InferenceRecord) -> None:
        task = asyncio.get_running_loop().create_task(self._publish(record))
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)

    async def _publish(self, record: InferenceRecord) -> None:
        data = msgspec.json.encode(record)
        js = self.nc.jetstream()
        # Nats-Msg-Id: a retry of a publish that did land (its ack was lost) is stored once
        headers = {"Nats-Msg-Id": record.id}
        for attempt in range(1, PUBLISH_ATTEMPTS + 1):
            try:
                await js.publish(subjects.INFERENCES_SUBJECT, data, stream=subjects.INFERENCES_STREAM, headers=headers)
                return
            except (nats.errors.Error, TimeoutError) as exc:
                if attempt == PUBLISH_ATTEMPTS:
                    log.error("inference record not published", record=data.decode(), error=str(exc))
                    return
                await asyncio.sleep(PUBLISH_RETRY_S)

    async def drain(self, timeout: float = 5.0) -> None:
        """Let the publishes in flight finish (at the gateway's stop)."""
        if self._publishing:
            await asyncio.wait(set(self._publishing), timeout=timeout)


class ObservedGeneration:
    """A Generation as the recorder sees it: the same `accepted`, chunks and `aclose`; each chunk measured, and
    the request recorded once at its close (a close before the last chunk: the client went away)."""

    def __init__(self, recorder: InferenceRecorder, generation: Generation, obs: Observation,
                 request: GenerateRequest, stream: bool, api: str, trit: int = TRIT_MAIN) -> None:  # fmt: skip
        self.accepted = generation.accepted
        self.instance_id = generation.instance_id
        self.first_token = asyncio.Event()  # set when its first token comes (what a validator beside it waits for)
        self._trit = trit
        self._recorder, self._inner, self._obs = recorder, generation, obs
        self._request, self._stream, self._api = request, stream, api
        self._ended_with: BaseException | None = None
        self._recorded = False

    async def __aiter__(self) -> AsyncIterator[TokenChunk]:
        try:
            async for chunk in self._inner:
                self._recorder.see(self._obs, self._request.model_id, chunk)
                if chunk.completion_tokens or chunk.finish_reason is not None:
                    self.first_token.set()
                yield chunk
        except BaseException as exc:
            self._ended_with = exc
            raise

    def end_with(self, exc: BaseException) -> None:
        """How the client saw it end, when that is not how the generation ended (a validator blocked it)."""
        self._ended_with = exc

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            if not self._recorded:
                self._recorded = True
                last = self._obs.last
                ended_with = self._ended_with
                if ended_with is None and (last is None or last.finish_reason is None):
                    ended_with = asyncio.CancelledError()  # closed before its end: the client went away
                self._recorder.end(self._obs, self._request, self._inner.instance_id, self._stream, self._api, ended_with,
                                   self._trit)  # fmt: skip
