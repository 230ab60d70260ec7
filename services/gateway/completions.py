"""/v1/chat/completions and /v1/completions: streaming (SSE) and not."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.background import BackgroundTask

from shared.ids import new_request_id

from services.gateway.completion_output import (
    ChatShape,
    Shape,
    TextShape,
    log_finished,
    sse_choices,
    sse_events,
    whole_of_choices,
)
from services.gateway.errors import bad_request
from services.gateway.generate import answer, gather, start_generation
from services.gateway.generation_client import Submitted
from services.gateway.generation_params import ChatPlan, plan_chat
from services.gateway.group_defaults import group_defaults
from services.gateway.openapi_doc import error_responses, json_body
from services.gateway.openai_schema import (
    ChatCompletionRequest,
    CompletionRequest,
    MAX_N,
    SamplingFields,
    decode_body,
)
from services.gateway.routing import tool_format
from services.gateway.tool_calls import ToolChatShape
from services.gateway.trifurcated import serve_trifurcated
from services.gateway.validator import plan_trifurcated

router = APIRouter()

GENERATION_ERRORS = error_responses(400, 404, 429, 503)


@router.post("/v1/chat/completions", openapi_extra=json_body(ChatCompletionRequest), responses=GENERATION_ERRORS)
async def chat_completions(request: Request):  # noqa: ANN201
    body = decode_body(await request.body(), ChatCompletionRequest)
    assert isinstance(body, ChatCompletionRequest)
    if not body.messages:
        raise bad_request("messages must not be empty", param="messages")
    plan = plan_chat(body)  # the prompt's messages, the grammar, how tool calls are read back
    state = request.app.state.gateway.follower.state
    plan = plan.reading(tool_format(state, body.model))
    group = group_defaults(state, body.model) if body.trifurcated else None
    tri = plan_trifurcated(body.trifurcated, body.model, body.speculative is not None, group)
    if tri is not None:
        if body.n != 1:
            raise bad_request("trifurcated inference gives one choice (n = 1)", param="n")
        rid = "chatcmpl-" + new_request_id().removeprefix("req-")
        return await serve_trifurcated(request, body, plan, tri, _shape(rid, body.model, True, plan, 0))
    return await _serve(request, body, chat=True, plan=plan, messages=plan.messages, json_schema=plan.json_schema,
                        tools=plan.tools)


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
    return await _serve(request, body, chat=False, prompt=prompt)


async def _serve(request: Request, body: SamplingFields, chat: bool, plan: ChatPlan | None = None, **what):  # noqa: ANN003, ANN202
    rid = ("chatcmpl-" if chat else "cmpl-") + new_request_id().removeprefix("req-")
    api = "chat.completions" if chat else "completions"
    logprobs, _top = body.logprob_request()
    if not 1 <= body.n <= MAX_N:  # before any generation starts (the sampling fields check it again)
        raise bad_request(f"n must be between 1 and {MAX_N}", param="n")
    # One generation per choice (`n`), each with its own seed schedule; accepted, or the OpenAI error (404, 429,
    # 400, 503) raised here, before any byte of a stream is sent.
    generations: list[Submitted] = []
    try:
        for i in range(body.n):
            choice_id = rid if i == 0 else f"{rid}-{i}"
            generations.append(await start_generation(request, choice_id, body, api=api, choice=i, **what))
    except BaseException:
        for generation in generations:
            await generation.aclose()
        raise
    shapes = [_shape(rid, body.model, chat, plan, i) for i in range(body.n)]
    if body.n == 1:
        events = sse_events(generations[0], shapes[0], body.include_usage, logprobs) if body.stream else None
        return await answer(request, generations[0], events, lambda text, last: whole_of_choices(shapes, [(text, last)], logprobs))
    if body.stream:
        async def close_all() -> None:
            for generation in generations:
                await generation.aclose()

        events = sse_choices(generations, shapes, body.include_usage, logprobs)
        return StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"},
                                 background=BackgroundTask(close_all))  # fmt: skip
    try:
        gathered = await asyncio.gather(*(gather(request, g) for g in generations))
    finally:
        for generation in generations:
            await generation.aclose()
    if any(g is None for g in gathered):
        return JSONResponse({}, status_code=499)
    for _text, last in gathered:  # type: ignore[misc]
        log_finished(last)
    return whole_of_choices(shapes, gathered, logprobs)  # type: ignore[arg-type]


def _shape(rid: str, model: str, chat: bool, plan: ChatPlan | None, index: int) -> Shape:
    if not chat:
        return TextShape(rid, model, index)
    if plan is not None and plan.tool_names:  # with tools, even `none`: no tool syntax in content
        return ToolChatShape(rid, model, plan, index)
    return ChatShape(rid, model, index)
