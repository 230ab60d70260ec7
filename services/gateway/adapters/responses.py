"""OpenAI Responses (POST /v1/responses) onto the one generation contract: text in and out, streamed as the
Responses events. Nothing is stored (no previous_response_id). The translations are pure; the route is thin."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Literal

import msgspec
from fastapi import APIRouter, Request

from shared.generation import ChatMessage, TokenChunk
from shared.ids import new_request_id

from services.gateway.completion_output import log_finished
from services.gateway.errors import OpenAIError, bad_request
from services.gateway.generate import answer, start_generation
from services.gateway.generation_client import Submitted
from services.gateway.openai_schema import SamplingFields

router = APIRouter()


class Part(msgspec.Struct):
    type: str
    text: str = ""


class Item(msgspec.Struct):
    role: Literal["user", "assistant", "system", "developer"] | None = None
    content: str | list[Part] | None = None
    type: str = "message"


class ResponsesRequest(msgspec.Struct):
    model: str
    input: str | list[Item] = ""
    instructions: str | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stream: bool = False
    store: bool | None = None
    previous_response_id: str | None = None
    metadata: dict | None = None
    tools: list[dict] | None = None  # refused for now: never silently ignored (see translate)
    tool_choice: str | dict | None = None


TEXT_PARTS = ("input_text", "output_text", "text")


def _item_message(i: int, item: Item) -> ChatMessage:
    if item.type != "message" or item.role is None:
        raise bad_request(f"input[{i}]: items of type {item.type!r} are not supported (only messages)", param="input")
    parts = item.content if isinstance(item.content, list) else [Part("input_text", item.content or "")]
    for part in parts:
        if part.type not in TEXT_PARTS:
            raise bad_request(f"input[{i}].content: parts of type {part.type!r} are not supported", param="input")
    role = "system" if item.role == "developer" else item.role
    return ChatMessage(role, "".join(p.text for p in parts))


def translate(body: ResponsesRequest) -> tuple[SamplingFields, tuple[ChatMessage, ...]]:
    if body.previous_response_id is not None:
        raise bad_request("previous_response_id is not supported: responses are not stored", param="previous_response_id")
    for name in ("tools", "tool_choice"):
        if getattr(body, name):
            raise bad_request(f"{name} is not supported yet", param=name)
    if isinstance(body.input, str):
        turns = [ChatMessage("user", body.input)] if body.input else []
    else:
        turns = [_item_message(i, item) for i, item in enumerate(body.input)]
    if not turns:
        raise bad_request("input must not be empty", param="input")
    system = [ChatMessage("system", body.instructions)] if body.instructions else []
    fields = SamplingFields(model=body.model, max_tokens=body.max_output_tokens, temperature=body.temperature,
                            top_p=body.top_p)  # fmt: skip
    return fields, (*system, *turns)


def output_item(item_id: str, text: str | None) -> dict:
    """The assistant message item (text None: the empty one a stream opens)."""
    content = [] if text is None else [{"type": "output_text", "text": text, "annotations": []}]
    status = "in_progress" if text is None else "completed"
    return {"type": "message", "id": item_id, "status": status, "role": "assistant", "content": content}


def response(rid: str, body: ResponsesRequest, created: int, text: str | None, last: TokenChunk | None) -> dict:
    incomplete = last is not None and last.finish_reason == "length"
    usage = None
    if last is not None:
        usage = {
            "input_tokens": last.prompt_tokens, "input_tokens_details": {"cached_tokens": last.cached_tokens},
            "output_tokens": last.completion_tokens, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": last.prompt_tokens + last.completion_tokens,
        }  # fmt: skip
    return {
        "id": rid, "object": "response", "created_at": created, "model": body.model,
        "status": "in_progress" if last is None else ("incomplete" if incomplete else "completed"),
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        "error": None, "instructions": body.instructions, "max_output_tokens": body.max_output_tokens,
        "temperature": body.temperature, "top_p": body.top_p, "metadata": body.metadata or {},
        "output": [] if text is None else [output_item("msg_" + rid.removeprefix("resp_"), text)],
        "parallel_tool_calls": False, "tool_choice": "none", "tools": [], "store": False,
        "text": {"format": {"type": "text"}}, "truncation": "disabled", "usage": usage,
    }  # fmt: skip


class StreamShape:
    """The Responses stream's events on plain data, numbered in order: the opening ones, one delta per piece, and
    the closing ones (the whole text again, then the finished response)."""

    def __init__(self, rid: str, body: ResponsesRequest, created: int) -> None:
        self.rid, self.body, self.created = rid, body, created
        self.item_id = "msg_" + rid.removeprefix("resp_")
        self.at = {"item_id": self.item_id, "output_index": 0, "content_index": 0}
        self.parts: list[str] = []
        self.seq = 0

    def opening(self) -> list[dict]:
        start = response(self.rid, self.body, self.created, None, None)
        empty = {"type": "output_text", "text": "", "annotations": []}
        return self._numbered([
            {"type": "response.created", "response": start},
            {"type": "response.in_progress", "response": start},
            {"type": "response.output_item.added", "output_index": 0, "item": output_item(self.item_id, None)},
            {"type": "response.content_part.added", **self.at, "part": empty},
        ])  # fmt: skip

    def delta(self, text: str) -> list[dict]:
        self.parts.append(text)
        return self._numbered([{"type": "response.output_text.delta", **self.at, "delta": text, "logprobs": []}])

    def closing(self, last: TokenChunk) -> list[dict]:
        text = "".join(self.parts)
        final = response(self.rid, self.body, self.created, text, last)
        done = "response.completed" if final["status"] == "completed" else "response.incomplete"
        return self._numbered([
            {"type": "response.output_text.done", **self.at, "text": text, "logprobs": []},
            {"type": "response.content_part.done", **self.at,
             "part": {"type": "output_text", "text": text, "annotations": []}},
            {"type": "response.output_item.done", "output_index": 0, "item": output_item(self.item_id, text)},
            {"type": done, "response": final},
        ])  # fmt: skip

    def error(self, exc: OpenAIError) -> list[dict]:
        return self._numbered([{"type": "error", "code": exc.code, "message": exc.message, "param": exc.param}])

    def _numbered(self, events: list[dict]) -> list[dict]:
        out = []
        for event in events:
            out.append(event | {"sequence_number": self.seq})
            self.seq += 1
        return out


def sse(data: dict) -> bytes:
    return f"event: {data['type']}\ndata: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n".encode()


async def events(generation: Submitted, shape: StreamShape) -> AsyncIterator[bytes]:
    """A failure after the 200 ends the stream with an `error` event."""
    last = None
    try:
        for event in shape.opening():
            yield sse(event)
        async for last in generation:
            if last.text:
                for event in shape.delta(last.text):
                    yield sse(event)
    except OpenAIError as exc:
        for event in shape.error(exc):
            yield sse(event)
        return
    finally:
        await generation.aclose()
    assert last is not None
    log_finished(last)
    for event in shape.closing(last):
        yield sse(event)


@router.post("/v1/responses")
async def create_response(request: Request):  # noqa: ANN201
    try:
        body = msgspec.json.decode(await request.body(), type=ResponsesRequest)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise bad_request(f"invalid request body: {exc}") from None
    fields, messages = translate(body)
    rid = "resp_" + new_request_id().removeprefix("req-")
    generation = await start_generation(request, rid, fields, messages=messages, api="responses")
    stream = events(generation, StreamShape(rid, body, int(time.time()))) if body.stream else None
    return await answer(request, generation, stream, lambda text, last: response(rid, body, int(time.time()), text, last))
