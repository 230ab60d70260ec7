"""Anthropic Messages (POST /v1/messages, POST /v1/messages/count_tokens) onto the one generation contract.
The translations are pure functions; the routes at the end are thin."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Literal

import msgspec
from fastapi import APIRouter, Request

from shared.generation import ChatMessage, TokenChunk
from shared.ids import new_request_id

from services.gateway.adapters.error_shapes import anthropic_error
from services.gateway.completion_output import log_finished
from services.gateway.errors import OpenAIError, bad_request
from services.gateway.generate import answer, count_prompt_tokens, start_generation
from services.gateway.generation_client import Submitted
from services.gateway.openai_schema import SamplingFields

router = APIRouter()


class Block(msgspec.Struct):
    type: str
    text: str = ""


class Message(msgspec.Struct):
    role: Literal["user", "assistant"]
    content: str | list[Block]


class MessagesRequest(msgspec.Struct):
    model: str
    messages: list[Message] = []
    max_tokens: int | None = None  # required by Anthropic's API; None only so the 400 can name it
    system: str | list[Block] | None = None
    stop_sequences: list[str] | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stream: bool = False
    metadata: dict | None = None
    tools: list[dict] | None = None  # refused for now: never silently ignored (see translate)
    tool_choice: dict | None = None


def _text(content: str | list[Block], where: str) -> str:
    if isinstance(content, str):
        return content
    for block in content:
        if block.type != "text":
            raise bad_request(f"content blocks of type {block.type!r} are not supported (only text)", param=where)
    return "".join(b.text for b in content)


def translate(body: MessagesRequest, count_only: bool = False) -> tuple[SamplingFields, tuple[ChatMessage, ...]]:
    """The request as the chat route's (sampling fields, messages). count_tokens needs no max_tokens."""
    if body.max_tokens is None and not count_only:
        raise bad_request("max_tokens: Field required", param="max_tokens")
    if not body.messages:
        raise bad_request("messages: at least one message is required", param="messages")
    if body.top_k is not None:
        raise bad_request("top_k is not supported", param="top_k")
    for name in ("tools", "tool_choice"):
        if getattr(body, name):
            raise bad_request(f"{name} is not supported yet", param=name)
    system = _text(body.system, "system") if body.system is not None else ""
    messages = [ChatMessage("system", system)] if system else []  # empty: none, so the template's default applies
    messages += [ChatMessage(m.role, _text(m.content, f"messages.{i}.content")) for i, m in enumerate(body.messages)]
    fields = SamplingFields(
        model=body.model, max_tokens=body.max_tokens, temperature=body.temperature, top_p=body.top_p,
        stop=body.stop_sequences,
    )  # fmt: skip
    return fields, tuple(messages)


def stop_reason(last: TokenChunk) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence) of a finished generation."""
    if last.finish_reason == "length":
        return "max_tokens", None
    if last.stop_sequence is not None:
        return "stop_sequence", last.stop_sequence
    return "end_turn", None


def message(message_id: str, model: str, text: str | None, last: TokenChunk | None, input_tokens: int) -> dict:
    """The whole message (text None: the empty one that opens a stream)."""
    reason, sequence = stop_reason(last) if last is not None else (None, None)
    return {
        "id": message_id, "type": "message", "role": "assistant", "model": model,
        "content": [] if text is None else [{"type": "text", "text": text}],
        "stop_reason": reason, "stop_sequence": sequence,
        "usage": {"input_tokens": input_tokens, "output_tokens": last.completion_tokens if last else 0},
    }  # fmt: skip


def opening_events(message_id: str, model: str, input_tokens: int) -> list[tuple[str, dict]]:
    return [
        ("message_start", {"type": "message_start", "message": message(message_id, model, None, None, input_tokens)}),
        ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ("ping", {"type": "ping"}),
    ]  # fmt: skip


def delta_event(text: str) -> tuple[str, dict]:
    return "content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}


def closing_events(last: TokenChunk) -> list[tuple[str, dict]]:
    reason, sequence = stop_reason(last)
    return [
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": sequence},
                           "usage": {"output_tokens": last.completion_tokens}}),
        ("message_stop", {"type": "message_stop"}),
    ]  # fmt: skip


def sse(name: str, data: dict) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n".encode()


async def events(generation: Submitted, message_id: str, model: str) -> AsyncIterator[bytes]:
    """Anthropic's order; a failure after the 200 ends the stream with an `error` event in Anthropic's shape."""
    last = None
    try:
        for name, data in opening_events(message_id, model, generation.accepted.prompt_tokens):
            yield sse(name, data)
        async for last in generation:
            if last.text:
                yield sse(*delta_event(last.text))
    except OpenAIError as exc:
        yield sse("error", anthropic_error(exc))
        return
    finally:
        await generation.aclose()
    assert last is not None
    log_finished(last)
    for name, data in closing_events(last):
        yield sse(name, data)


def decode(raw: bytes) -> MessagesRequest:
    try:
        return msgspec.json.decode(raw, type=MessagesRequest)
    except msgspec.ValidationError as exc:
        raise bad_request(f"invalid request body: {exc}") from None
    except msgspec.DecodeError as exc:
        raise bad_request(f"request body is not valid JSON: {exc}") from None


@router.post("/v1/messages")
async def messages(request: Request):  # noqa: ANN201
    body = decode(await request.body())
    fields, chat = translate(body)
    message_id = "msg_" + new_request_id().removeprefix("req-")
    generation = await start_generation(request, message_id, fields, messages=chat, api="anthropic.messages")
    stream = events(generation, message_id, body.model) if body.stream else None
    return await answer(request, generation, stream,
                        lambda text, last: message(message_id, body.model, text, last, last.prompt_tokens))  # fmt: skip


@router.post("/v1/messages/count_tokens")
async def count_tokens(request: Request) -> dict:
    fields, chat = translate(decode(await request.body()), count_only=True)
    return {"input_tokens": await count_prompt_tokens(request, fields.model, chat)}
