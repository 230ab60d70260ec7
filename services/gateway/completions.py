"""/v1/chat/completions and /v1/completions: streaming (SSE) and not."""

from __future__ import annotations

from fastapi import APIRouter, Request

from shared.ids import new_request_id

from services.gateway.completion_output import ChatShape, TextShape, sse_events, usage_of
from services.gateway.errors import bad_request
from services.gateway.generate import answer, start_generation
from services.gateway.generation_params import ChatPlan, plan_chat
from services.gateway.openapi_doc import error_responses, json_body
from services.gateway.openai_schema import (
    ChatCompletionRequest,
    CompletionRequest,
    SamplingFields,
    decode_body,
    openai_finish_reason,
)
from services.gateway.tool_calls import ToolChatShape

router = APIRouter()

GENERATION_ERRORS = error_responses(400, 404, 429, 503)


@router.post("/v1/chat/completions", openapi_extra=json_body(ChatCompletionRequest), responses=GENERATION_ERRORS)
async def chat_completions(request: Request):  # noqa: ANN201
    body = decode_body(await request.body(), ChatCompletionRequest)
    assert isinstance(body, ChatCompletionRequest)
    if not body.messages:
        raise bad_request("messages must not be empty", param="messages")
    plan = plan_chat(body)  # the prompt's messages, the grammar, how tool calls are read back
    return await _serve(request, body, chat=True, plan=plan, messages=plan.messages, json_schema=plan.json_schema)


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
    # accepted, or the OpenAI error (404, 429, 400, 503) raised here, before any byte of a stream is sent
    generation = await start_generation(request, rid, body, api="chat.completions" if chat else "completions", **what)
    shape: ChatShape | TextShape = ChatShape(rid, body.model) if chat else TextShape(rid, body.model)
    if plan is not None and plan.tool_names:  # with tools, even `none`: no tool syntax in content
        shape = ToolChatShape(rid, body.model, plan)
    events = sse_events(generation, shape, body.include_usage) if body.stream else None
    return await answer(request, generation, events,
                        lambda text, last: shape.whole(text, openai_finish_reason(last.finish_reason) or "stop", usage_of(last)))  # fmt: skip
