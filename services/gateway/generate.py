"""The one way a request of any API becomes a generation: the model's card, the sampling parameters (checked in
one place: openai_schema.SamplingFields), an instance, and the runner's accepted answer. Every API (Chat
Completions, Anthropic Messages, Responses, Ollama) translates its request into these and its chunks out."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.background import BackgroundTask

from shared.generation import ChatMessage, GenerateRequest, SamplingParams, TokenChunk
from shared.ids import new_request_id
from shared.models import UnknownModel, get_card

from services.gateway.completion_output import log_finished
from services.gateway.errors import model_not_found
from services.gateway.generation_client import Submitted
from services.gateway.openai_schema import SamplingFields
from services.gateway.routing import draft_named_instance, pick_instance, speculation_for

DISCONNECT_POLL_S = 0.5


async def start_generation(
    request: Request,
    request_id: str,
    fields: SamplingFields,
    messages: tuple[ChatMessage, ...] | None = None,
    prompt: str | None = None,
    api: str = "chat.completions",
    json_schema: str | None = None,
    choice: int = 0,
    instance: str | None = None,
    tools: str | None = None,
) -> Submitted:
    """Accepted, or an OpenAIError (404 unknown model, 400, 429, 503) raised before any byte is sent. The recorder
    measures it for /metrics, the dashboard and the inference log (as `api`), however it ends. `instance`: the one
    to serve it (a trifurcated group's main) while it is ready; else any ready instance of the model. `tools`: for
    the chat template (ChatPlan.tools)."""
    gateway = request.app.state.gateway
    try:
        card = get_card(fields.model, gateway.follower.state.models)
    except UnknownModel:
        raise model_not_found(fields.model) from None
    sampling = fields.sampling(card.context_length)
    if choice:  # one of `n`: its own seed schedule (the seed itself is the same, or fixed by its runner)
        sampling = msgspec.structs.replace(sampling, choice=choice)
    speculation = fields.speculation()
    state = gateway.follower.state
    if instance is not None and instance in state.instances and state.instance_ready(instance):
        instance_id = instance
    else:
        avoid = draft_named_instance(state, speculation)
        instance_id = pick_instance(state, card.model_id, gateway.client.next_turn(), avoid=avoid)
    speculation = speculation_for(state, speculation, instance_id)
    generate = GenerateRequest(request_id, fields.model, sampling, messages=messages, prompt=prompt,
                               json_schema=json_schema, speculative=speculation, tools=tools)  # fmt: skip
    return await gateway.recorder.submit(gateway.client, instance_id, generate, fields.stream, api)


async def count_prompt_tokens(
    request: Request, model: str, messages: tuple[ChatMessage, ...], tools: str | None = None
) -> int:
    """The prompt's tokens as a generation of these messages would count them (a runner of the model tokenizes)."""
    gateway = request.app.state.gateway
    try:
        card = get_card(model, gateway.follower.state.models)
    except UnknownModel:
        raise model_not_found(model) from None
    instance_id = pick_instance(gateway.follower.state, card.model_id, gateway.client.next_turn())
    ask = GenerateRequest(new_request_id(), model, SamplingParams(max_tokens=None), messages=messages, tools=tools)
    return await gateway.client.count(instance_id, ask)


async def gather(request: Request, generation: Submitted) -> tuple[str, TokenChunk] | None:
    """The whole text and the last chunk, which carries every chunk's logprobs; None when the client went away
    first (the generation is then cancelled by its closing, which is the caller's)."""

    async def read() -> tuple[str, TokenChunk]:
        parts, logprobs, last = [], [], None
        async for chunk in generation:
            parts.append(chunk.text)
            logprobs += chunk.logprobs
            last = chunk
        assert last is not None and last.finish_reason is not None
        return "".join(parts), msgspec.structs.replace(last, logprobs=logprobs)

    task = asyncio.create_task(read())
    while not task.done():
        await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
        if not task.done() and await request.is_disconnected():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return None
    return task.result()


async def answer(
    request: Request,
    generation: Submitted,
    stream: AsyncIterator[bytes] | None,
    whole: Callable[[str, TokenChunk], Any],
    media_type: str = "text/event-stream",
) -> Any:
    """Every API's answer to an accepted generation: `stream` (its events, in the API's shape) as a streamed
    response that closes the generation when it ends; else the whole text and last chunk made into the API's
    body by `whole` (499 when the client went away first)."""
    if stream is not None:
        headers = {"Cache-Control": "no-cache"} if media_type == "text/event-stream" else None
        return StreamingResponse(stream, media_type=media_type, headers=headers, background=BackgroundTask(generation.aclose))
    try:
        gathered = await gather(request, generation)
    finally:
        await generation.aclose()
    if gathered is None:
        return JSONResponse({}, status_code=499)
    text, last = gathered
    log_finished(last)
    return whole(text, last)
