"""The gateway's side of a generation: pick a ready instance, submit over NATS, read token chunks."""

from __future__ import annotations

import asyncio
import itertools
from collections import defaultdict
from collections.abc import AsyncIterator

import msgspec
import structlog
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError, TimeoutError as NatsTimeout

from shared import subjects
from shared.events import AnyEvent, InstanceDeleted, RunnerStatusChanged
from shared.generation import CancelGeneration, GenerateReply, GenerateRejected, GenerateRequest, TokenChunk
from shared.state import ClusterState

from services.gateway.errors import OpenAIError, bad_request, unavailable

log = structlog.get_logger()

SUBMIT_TIMEOUT_S = 10.0
# Longest silence between two chunks before the gateway gives up on a generation. Runners send an empty
# keep-alive chunk every few seconds while a request waits or prefills, so silence means a dead runner.
CHUNK_TIMEOUT_S = 30.0


class InstanceGone(Exception):
    pass


def pick_instance(state: ClusterState, model_id: str, turn: int) -> str:
    """A ready instance of the model, round robin; otherwise a 503 that says why none is ready."""
    instances = state.instances_of(model_id)
    ready = sorted(i.instance_id for i in instances if state.instance_ready(i.instance_id))
    if ready:
        return ready[turn % len(ready)]
    if not instances:
        raise unavailable(
            f"no instance of {model_id} is placed; create one with POST /instances "
            f'{{"model": "{model_id}"}} or start exo with --model {model_id}'
        )
    return _raise_not_ready(state, instances[0].instance_id, model_id)


def _raise_not_ready(state: ClusterState, instance_id: str, model_id: str) -> str:
    parts = []
    for shard, runner in zip(state.instances[instance_id].shards, state.instance_runners(instance_id)):
        if runner is None:
            parts.append(f"rank {shard.rank} on {shard.node_id}: waiting for its worker")
        else:
            progress = f" {runner.progress:.0%}" if runner.progress is not None else ""
            detail = f" ({runner.detail})" if runner.detail else ""
            parts.append(f"rank {shard.rank} on {shard.node_id}: {runner.phase}{progress}{detail}")
    raise unavailable(f"instance {instance_id} of {model_id} is not ready: " + "; ".join(parts))


class GenerationClient:
    def __init__(self, nc: NATS) -> None:
        self.nc = nc
        self._turns = itertools.count()
        self._listeners: dict[str, set[asyncio.Queue]] = defaultdict(set)

    def next_turn(self) -> int:
        return next(self._turns)

    def on_event(self, _state: ClusterState, event: AnyEvent) -> None:
        """End the streams of an instance that failed or was deleted: an error, never a hang."""
        if isinstance(event, RunnerStatusChanged) and event.phase in ("failed", "stopped"):
            self._fail_instance(event.instance_id, f"rank {event.rank} {event.phase}: {event.detail}")
        elif isinstance(event, InstanceDeleted):
            self._fail_instance(event.instance_id, f"instance deleted: {event.reason}")

    def _fail_instance(self, instance_id: str, reason: str) -> None:
        for queue in self._listeners.get(instance_id, ()):
            queue.put_nowait(InstanceGone(reason))

    async def stream(self, instance_id: str, request: GenerateRequest) -> AsyncIterator[TokenChunk]:
        """Yields the chunks of one generation; cancels it on the runner if the consumer stops early."""
        queue: asyncio.Queue = asyncio.Queue()

        async def on_chunk(msg) -> None:  # noqa: ANN001
            queue.put_nowait(msg.data)

        sub = await self.nc.subscribe(subjects.tokens(request.request_id), cb=on_chunk)
        self._listeners[instance_id].add(queue)
        finished = False
        try:
            yield_first = await self._submit(instance_id, request)
            yield yield_first
            async for chunk in self._chunks(queue, request.request_id):
                finished = chunk.finish_reason is not None
                yield chunk
                if finished:
                    return
        finally:
            self._listeners[instance_id].discard(queue)
            await sub.unsubscribe()
            if not finished:
                await self.cancel(instance_id, request.request_id)

    async def _submit(self, instance_id: str, request: GenerateRequest) -> TokenChunk:
        """Submit; returns a zero-token chunk carrying the prompt token count."""
        try:
            msg = await self.nc.request(
                subjects.runner_generate(instance_id), msgspec.json.encode(request), timeout=SUBMIT_TIMEOUT_S
            )
        except NoRespondersError:
            raise unavailable(f"instance {instance_id} has no runner answering; it may be restarting") from None
        except NatsTimeout:
            raise unavailable(
                f"instance {instance_id} did not accept the request within {SUBMIT_TIMEOUT_S:.0f} s"
            ) from None
        reply = msgspec.json.decode(msg.data, type=GenerateReply)
        if isinstance(reply, GenerateRejected):
            raise _rejection_error(reply)
        return TokenChunk(request.request_id, -1, "", 0, reply.prompt_tokens)

    async def _chunks(self, queue: asyncio.Queue, request_id: str) -> AsyncIterator[TokenChunk]:
        expected = 0
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), CHUNK_TIMEOUT_S)
            except TimeoutError:
                raise OpenAIError(504, f"no tokens for {CHUNK_TIMEOUT_S:.0f} s", "server_error", "timeout") from None
            if isinstance(item, InstanceGone):
                raise OpenAIError(502, f"generation failed: {item}", "server_error", "instance_failed")
            chunk = msgspec.json.decode(item, type=TokenChunk)
            if chunk.error is not None:
                raise OpenAIError(500, chunk.error, "server_error", "generation_failed")
            if chunk.index != expected:
                raise OpenAIError(502, f"lost tokens: chunk {chunk.index} came after {expected - 1}", "server_error")
            expected += 1
            yield chunk

    async def cancel(self, instance_id: str, request_id: str) -> None:
        if self.nc.is_connected:
            await self.nc.publish(subjects.runner_cancel(instance_id), msgspec.json.encode(CancelGeneration(request_id)))


def _rejection_error(reply: GenerateRejected) -> OpenAIError:
    if reply.code == "busy":
        retry = str(max(1, round(reply.retry_after or 1)))
        return OpenAIError(429, reply.message, "rate_limit_error", "busy", headers={"Retry-After": retry})
    if reply.code == "not_ready":
        return unavailable(reply.message)
    return bad_request(reply.message, param=reply.param, code=reply.code)
