"""/v1/chat/completions and /v1/completions: streaming (SSE) and not."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.background import BackgroundTask

from shared.generation import GenerateRequest, SamplingParams, TokenChunk
from shared.ids import new_request_id
from shared.models import UnknownModel, get_card

from services.gateway.completion_output import ChatShape, TextShape, log_finished, sse_events, usage_of
from services.gateway.errors import bad_request, model_not_found
from services.gateway.generation_client import Generation
from services.gateway.generation_params import ChatPlan, plan_chat
from services.gateway.openapi_doc import error_responses, json_body
from services.gateway.openai_schema import (
    ChatCompletionRequest,
    CompletionRequest,
    SamplingFields,
    decode_body,
    openai_finish_reason,
)
from services.gateway.routing import pick_instance
from services.gateway.tool_calls import ToolChatShape

router = APIRouter()

DISCONNECT_POLL_S = 0.5
GENERATION_ERRORS = error_responses(400, 404, 429, 503)


@router.post("/v1/chat/completions", openapi_extra=json_body(ChatCompletionRequest), responses=GENERATION_ERRORS)
async def chat_completions(request: Request):  # noqa: ANN201
    body = decode_body(await request.body(), ChatCompletionRequest)
    assert isinstance(body, ChatCompletionRequest)
    plan = plan_chat(body)  # the prompt's messages, the grammar, how tool calls are read back

    def build(rid: str, sampling: SamplingParams) -> GenerateRequest:
        return GenerateRequest(rid, body.model, sampling, messages=plan.messages, json_schema=plan.json_schema)

    return await _serve(request, body, build, chat=True, plan=plan)


@router.post("/v1/completions", openapi_extra=json_body(CompletionRequest), responses=GENERATION_ERRORS)
async def completions(request: Request):  # noqa: ANN201
    body = decode_body(await request.body(), CompletionRequest)
    assert isinstance(body, CompletionRequest)
    if isinstance(body.prompt, list):
        if len(body.prompt) != 1:
            raise bad_request("exactly one prompt is supported", param="prompt")
        prompt = body.prompt[0]
    else:
        prompt = body.prompt
    return await _serve(request, body, lambda rid, sampling: GenerateRequest(rid, body.model, sampling, prompt=prompt), chat=False)


async def _serve(request: Request, body: SamplingFields, build, chat: bool, plan: ChatPlan | None = None):  # noqa: ANN001, ANN202
    gateway = request.app.state.gateway
    try:
        card = get_card(body.model)
    except UnknownModel:
        raise model_not_found(body.model) from None
    sampling = body.sampling(card.context_length)
    instance_id = pick_instance(gateway.follower.state, body.model, gateway.client.next_turn())
    rid = ("chatcmpl-" if chat else "cmpl-") + new_request_id().removeprefix("req-")
    # accepted, or the OpenAI error (429, 400, 503) raised here, before any byte of a stream is sent
    generation = await gateway.client.submit(instance_id, build(rid, sampling))
    shape: ChatShape | TextShape = ChatShape(rid, body.model) if chat else TextShape(rid, body.model)
    if plan is not None and plan.tool_names:  # with tools, even `none`: no tool syntax in content
        shape = ToolChatShape(rid, body.model, plan)
    if body.stream:
        return StreamingResponse(
            sse_events(generation, shape, body.include_usage), media_type="text/event-stream",
            headers={"Cache-Control": "no-cache"}, background=BackgroundTask(generation.aclose),
        )  # fmt: skip
    try:
        return await _collect(request, generation, shape)
    finally:
        await generation.aclose()


async def _collect(request: Request, generation: Generation, shape: ChatShape | TextShape):  # noqa: ANN202
    async def gather() -> tuple[str, TokenChunk]:
        parts, last = [], None
        async for chunk in generation:
            parts.append(chunk.text)
            last = chunk
        assert last is not None and last.finish_reason is not None
        return "".join(parts), last

    task = asyncio.create_task(gather())
    while not task.done():
        await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
        if not task.done() and await request.is_disconnected():
            task.cancel()  # closing the generation (our caller) cancels it on the runner
            await asyncio.gather(task, return_exceptions=True)
            return JSONResponse({}, status_code=499)
    text, last = task.result()
    log_finished(last)
    return shape.whole(text, openai_finish_reason(last.finish_reason) or "stop", usage_of(last))
