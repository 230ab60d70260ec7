"""The gateway's side of a generation: submit over NATS (accepted or rejected), then read the token chunks."""

from __future__ import annotations

import asyncio
import itertools
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any, Protocol

import msgspec
import structlog
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError, TimeoutError as NatsTimeout
from nats.micro.request import ERROR_CODE_HEADER, ERROR_HEADER

from shared import subjects
from shared.events import AnyEvent
from shared.generation import (
    CancelGeneration,
    GenerateAccepted,
    GenerateRejected,
    GenerateReply,
    GenerateRequest,
    TokenChunk,
    TokenCount,
)
from shared.ids import InstanceId
from shared.state import ClusterState

from services.gateway.errors import OpenAIError, bad_request, unavailable
from services.gateway.routing import instance_down
from services.gateway.uploads import submission

log = structlog.get_logger()

SUBMIT_TIMEOUT_S = 10.0
# Longest silence between two chunks before the gateway gives up on a generation. Runners send an empty
# keep-alive chunk every few seconds while a request waits or prefills, so silence means a dead runner.
CHUNK_TIMEOUT_S = 30.0


class _Listener:
    """One request's inbox: its chunks, and the news that its instance went down."""

    def __init__(self) -> None:
        self.chunks: asyncio.Queue[bytes | OpenAIError] = asyncio.Queue()
        self.down: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def instance_down(self, reason: str) -> None:
        if not self.down.done():
            self.down.set_result(reason)
            self.chunks.put_nowait(OpenAIError(502, f"generation failed: {reason}", "server_error", "instance_failed"))


class Submitted(Protocol):
    """What the routes use of a submitted request: a Generation, or one that something observes on its way."""

    accepted: GenerateAccepted

    def __aiter__(self) -> AsyncIterator[TokenChunk]: ...

    async def aclose(self) -> None: ...


class Generation:
    """An accepted request: the runner's answer (`accepted`), then its chunks, iterated once; the last one
    carries the finished request's record. Closing it before the last chunk cancels it on the runner."""

    def __init__(self, client: GenerationClient, instance_id: InstanceId, request_id: str, accepted: GenerateAccepted,
                 listener: _Listener, sub) -> None:  # noqa: ANN001 - a nats subscription  # fmt: skip
        self.accepted = accepted
        self.instance_id, self.request_id = instance_id, request_id
        self._client, self._listener, self._sub = client, listener, sub
        self._finished = self._closed = False

    async def __aiter__(self) -> AsyncIterator[TokenChunk]:
        expected = 0
        while not self._finished:
            try:
                item = await asyncio.wait_for(self._listener.chunks.get(), CHUNK_TIMEOUT_S)
            except TimeoutError:
                raise OpenAIError(504, f"no tokens for {CHUNK_TIMEOUT_S:.0f} s", "server_error", "timeout") from None
            if isinstance(item, OpenAIError):
                raise item
            chunk = msgspec.json.decode(item, type=TokenChunk)
            if chunk.index != expected:
                raise OpenAIError(502, f"lost tokens: chunk {chunk.index} came after {expected - 1}", "server_error")
            expected += 1
            self._finished = chunk.finish_reason is not None
            if chunk.error is not None:
                raise OpenAIError(500, chunk.error, "server_error", "generation_failed")
            yield chunk

    async def aclose(self) -> None:
        """Idempotent: forget the request's subject, and cancel it on the runner unless it finished."""
        if self._closed:
            return
        self._closed = True
        await self._client._forget(self.instance_id, self._listener, self._sub)
        if not self._finished:
            await self._client.cancel(self.instance_id, self.request_id)


class GenerationClient:
    def __init__(self, nc: NATS) -> None:
        self.nc = nc
        self._turns = itertools.count()
        self._listeners: dict[InstanceId, set[_Listener]] = defaultdict(set)

    def next_turn(self) -> int:
        return next(self._turns)

    def on_event(self, state: ClusterState, _event: AnyEvent) -> None:
        """End the submits and streams of an instance that went down: an error at once, never a wait or a hang."""
        for instance_id, listeners in list(self._listeners.items()):
            if listeners and (reason := instance_down(state, instance_id)) is not None:
                log.warning("instance down; its requests fail", instance=instance_id, requests=len(listeners))
                for listener in listeners:
                    listener.instance_down(reason)

    async def submit(self, instance_id: InstanceId, request: GenerateRequest) -> Generation:
        """The runner's answer: a Generation when it accepted, an OpenAIError (429, 400, 503...) otherwise."""
        listener = _Listener()

        async def on_chunk(msg) -> None:  # noqa: ANN001
            listener.chunks.put_nowait(msg.data)

        sub = await self.nc.subscribe(subjects.tokens(request.request_id), cb=on_chunk)
        self._listeners[instance_id].add(listener)
        try:
            accepted = await self._ask(instance_id, request, listener)
        except BaseException:
            await self._forget(instance_id, listener, sub)
            raise
        return Generation(self, instance_id, request.request_id, accepted, listener, sub)

    async def _ask(self, instance_id: InstanceId, request: GenerateRequest, listener: _Listener) -> GenerateAccepted:
        """Ask the runner, until it answers or its instance is known to be down (then at once: 503)."""
        async with submission(self.nc, request) as (payload, headers):
            subject = subjects.runner_generate(instance_id)
            asking = asyncio.ensure_future(self.nc.request(subject, payload, SUBMIT_TIMEOUT_S, headers=headers))
            either: list[asyncio.Future[Any]] = [asking, listener.down]
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            if not asking.done():
                asking.cancel()
                await asyncio.gather(asking, return_exceptions=True)
                raise unavailable(listener.down.result())
        try:
            msg = asking.result()
        except NoRespondersError:
            raise unavailable(f"instance {instance_id} has no runner answering; it may be restarting") from None
        except NatsTimeout:
            raise unavailable(
                f"instance {instance_id} did not accept the request within {SUBMIT_TIMEOUT_S:.0f} s"
            ) from None
        if msg.headers and ERROR_HEADER in msg.headers:  # its handler raised (micro counted the error)
            message = f"the runner refused the request: {msg.headers[ERROR_HEADER]}"
            if msg.headers.get(ERROR_CODE_HEADER, "").startswith("4"):
                raise bad_request(message)
            raise OpenAIError(500, message, "server_error", "runner_error")
        reply = msgspec.json.decode(msg.data, type=GenerateReply)
        if isinstance(reply, GenerateRejected):
            raise _rejection_error(reply)
        return reply

    async def count(self, instance_id: InstanceId, request: GenerateRequest) -> int:
        """The prompt tokens of a request, counted by a runner of the instance (it owns the tokenizer and the
        chat template); nothing is generated and no slot is taken."""
        try:
            msg = await self.nc.request(subjects.runner_count(instance_id), msgspec.json.encode(request), SUBMIT_TIMEOUT_S)
        except NoRespondersError:
            raise unavailable(f"instance {instance_id} has no runner answering; it may be restarting") from None
        except NatsTimeout:
            raise unavailable(f"instance {instance_id} did not answer within {SUBMIT_TIMEOUT_S:.0f} s") from None
        if msg.headers and ERROR_HEADER in msg.headers:
            raise bad_request(f"the runner refused the request: {msg.headers[ERROR_HEADER]}")
        return msgspec.json.decode(msg.data, type=TokenCount).prompt_tokens

    async def _forget(self, instance_id: InstanceId, listener: _Listener, sub) -> None:  # noqa: ANN001
        self._listeners[instance_id].discard(listener)
        if not self._listeners[instance_id]:
            del self._listeners[instance_id]
        await sub.unsubscribe()

    async def cancel(self, instance_id: InstanceId, request_id: str) -> None:
        if self.nc.is_connected:
            await self.nc.publish(subjects.runner_cancel(instance_id), msgspec.json.encode(CancelGeneration(request_id)))


def _rejection_error(reply: GenerateRejected) -> OpenAIError:
    if reply.code == "busy":
        retry = str(max(1, round(reply.retry_after or 1)))
        return OpenAIError(429, reply.message, "rate_limit_error", "busy", headers={"Retry-After": retry})
    if reply.code == "not_ready":
        return unavailable(reply.message)
    return bad_request(reply.message, param=reply.param, code=reply.code)
