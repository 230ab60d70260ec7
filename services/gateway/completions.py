"""/v1/chat/completions and /v1/completions: streaming (SSE) and not."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from shared.generation import GenerateRequest, TokenChunk
from shared.ids import new_request_id
from shared.models import UnknownModel, get_card

from services.gateway.errors import OpenAIError, bad_request, model_not_found
from services.gateway.generation_client import pick_instance
from services.gateway.openai_schema import (
    ChatCompletionRequest,
    CompletionRequest,
    SamplingFields,
    chat_chunk,
    chat_completion,
    decode_body,
    openai_finish_reason,
    text_completion,
    usage,
)

router = APIRouter()

DISCONNECT_POLL_S = 0.5


@router.post("/v1/chat/completions")
async def chat_completions(request: Request):  # noqa: ANN201
    body = decode_body(await request.body(), ChatCompletionRequest)
    assert isinstance(body, ChatCompletionRequest)
    if not body.messages:
        raise bad_request("messages must not be empty", param="messages")
    messages = tuple(m.as_chat_message() for m in body.messages)
    return await _serve(request, body, lambda rid, sampling: GenerateRequest(rid, body.model, sampling, messages=messages), chat=True)


@router.post("/v1/completions")
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


async def _serve(request: Request, body: SamplingFields, build, chat: bool):  # noqa: ANN001, ANN202
    gateway = request.app.state.gateway
    try:
        card = get_card(body.model)
    except UnknownModel:
        raise model_not_found(body.model) from None
    sampling = body.sampling(card.context_length)
    instance_id = pick_instance(gateway.follower.state, body.model, gateway.client.next_turn())
    rid = ("chatcmpl-" if chat else "cmpl-") + new_request_id().removeprefix("req-")
    generate = build(rid, sampling)
    chunks = gateway.recorder.observe(gateway.client.stream(instance_id, generate), generate, instance_id, body.stream)
    first = await anext(chunks)  # the submit: raises the OpenAI error (429, 400, 503) before any byte is sent
    if body.stream:
        events = (_sse_chat if chat else _sse_text)(rid, body, first, chunks)
        return StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    return await _collect(request, rid, body, first, chunks, chat)


async def _collect(request: Request, rid: str, body: SamplingFields, first: TokenChunk, chunks, chat: bool):  # noqa: ANN001, ANN202
    async def gather() -> tuple[str, str, TokenChunk]:
        parts, finish, last = [], "stop", first
        async for chunk in chunks:
            parts.append(chunk.text)
            last = chunk
            finish = openai_finish_reason(chunk.finish_reason) or finish
        return "".join(parts), finish, last

    task = asyncio.create_task(gather())
    while not task.done():
        await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
        if not task.done() and await request.is_disconnected():
            task.cancel()  # closing the chunk iterator cancels the generation on the runner
            await asyncio.gather(task, return_exceptions=True)
            await chunks.aclose()
            return JSONResponse({}, status_code=499)
    text, finish, last = task.result()
    if chat:
        return chat_completion(rid, body.model, text, finish, _usage(last))
    return text_completion(rid, body.model, text, finish, _usage(last))


def _usage(last: TokenChunk) -> dict:
    return usage(last.prompt_tokens, last.completion_tokens, last.cached_tokens)


def _sse(data: dict | str) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {payload}\n\n".encode()


async def _sse_chat(rid: str, body: SamplingFields, first: TokenChunk, chunks) -> AsyncIterator[bytes]:  # noqa: ANN001
    created = int(time.time())
    yield _sse(chat_chunk(rid, body.model, created, {"role": "assistant", "content": ""}, None))
    last = first
    try:
        async for last in chunks:
            finish = openai_finish_reason(last.finish_reason)
            if last.text:
                yield _sse(chat_chunk(rid, body.model, created, {"content": last.text}, None))
            if finish is not None:
                yield _sse(chat_chunk(rid, body.model, created, {}, finish))
    except OpenAIError as exc:
        yield _sse(exc.body())
        return
    finally:
        await chunks.aclose()
    if body.include_usage:
        yield _sse(chat_chunk(rid, body.model, created, {}, None) | {"choices": [], "usage": _usage(last)})
    yield _sse("[DONE]")


async def _sse_text(rid: str, body: SamplingFields, first: TokenChunk, chunks) -> AsyncIterator[bytes]:  # noqa: ANN001
    last = first
    try:
        async for last in chunks:
            finish = openai_finish_reason(last.finish_reason)
            if last.text or finish is not None:
                yield _sse(text_completion(rid, body.model, last.text, finish, None))
    except OpenAIError as exc:
        yield _sse(exc.body())
        return
    finally:
        await chunks.aclose()
    if body.include_usage:
        yield _sse(text_completion(rid, body.model, "", None, _usage(last)) | {"choices": []})
    yield _sse("[DONE]")
