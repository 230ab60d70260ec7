"""Anthropic Messages (POST /v1/messages, POST /v1/messages/count_tokens) onto the one generation contract.
The translations are pure functions; the routes at the end are thin."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Literal

import msgspec
from fastapi import APIRouter, Request

from shared.generation import TokenChunk
from shared.ids import new_request_id

from services.gateway.adapters.error_shapes import anthropic_error
from services.gateway.adapters.tool_shapes import anthropic_content, anthropic_tool_choice, anthropic_tools, anthropic_turn
from services.gateway.completion_output import log_finished
from services.gateway.errors import OpenAIError, bad_request
from services.gateway.generate import answer, count_prompt_tokens, start_generation
from services.gateway.generation_client import Submitted
from services.gateway.generation_params import ChatPlan, plan_of_openai_shapes
from services.gateway.openai_schema import SamplingFields
from services.gateway.tool_calls import read_answer

router = APIRouter()


class Block(msgspec.Struct):
    type: str
    text: str = ""


class Message(msgspec.Struct):
    role: Literal["user", "assistant"]
    content: str | list[dict]  # blocks: text, tool_use, tool_result


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
    tools: list[dict] | None = None
    tool_choice: dict | None = None


BLOCK_TYPES = ("text", "tool_use", "tool_result")
TOOL_CHOICES = ("auto", "any", "none", "tool")


def _text(content: str | list[Block], where: str) -> str:
    if isinstance(content, str):
        return content
    for block in content:
        if block.type != "text":
            raise bad_request(f"content blocks of type {block.type!r} are not supported (only text)", param=where)
    return "".join(b.text for b in content)


def translate(body: MessagesRequest, count_only: bool = False) -> tuple[SamplingFields, ChatPlan]:
    """The request as the chat route's (sampling fields, plan: messages, grammar, tools). count_tokens needs no
    max_tokens."""
    if body.max_tokens is None and not count_only:
        raise bad_request("max_tokens: Field required", param="max_tokens")
    if not body.messages:
        raise bad_request("messages: at least one message is required", param="messages")
    system = _text(body.system, "system") if body.system is not None else ""
    turns = [{"role": "system", "content": system}] if system else []  # empty: none, so the template's default applies
    for i, m in enumerate(body.messages):
        blocks = _blocks(m.content, f"messages.{i}.content")
        turns += anthropic_turn(m.role, blocks) if blocks else [{"role": m.role, "content": ""}]
    tools = _tools(body.tools or [])
    try:
        plan = plan_of_openai_shapes(body.model, turns, tools, _tool_choice(body.tool_choice))
    except OpenAIError as exc:
        exc.param = _anthropic_param(exc.param)
        raise
    fields = SamplingFields(
        model=body.model, max_tokens=body.max_tokens, temperature=body.temperature, top_p=body.top_p,
        top_k=body.top_k, stop=body.stop_sequences,
    )  # fmt: skip
    return fields, plan


def _blocks(content: str | list[dict], where: str) -> list[dict]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    for j, block in enumerate(content):
        if block.get("type") not in BLOCK_TYPES:
            kind = block.get("type")
            raise bad_request(f"content blocks of type {kind!r} are not supported (only {', '.join(BLOCK_TYPES)})",
                              param=f"{where}.{j}.type")  # fmt: skip
        fields = {"text": ("text",), "tool_use": ("id", "name"), "tool_result": ("tool_use_id",)}[block["type"]]
        for field in fields:
            if not isinstance(block.get(field), str):
                raise bad_request(f"a {block['type']} block needs {field}", param=f"{where}.{j}.{field}")
    return content


def _tools(tools: list[dict]) -> list[dict]:
    for i, tool in enumerate(tools):
        if tool.get("type") not in (None, "custom"):
            raise bad_request(f"tools of type {tool['type']!r} are not supported (only custom tools)", param=f"tools.{i}.type")
        if not isinstance(tool.get("name"), str) or not tool["name"]:
            raise bad_request("a tool needs a name", param=f"tools.{i}.name")
    return anthropic_tools(tools)


def _tool_choice(choice: dict | None) -> str | dict | None:
    if choice is not None and (choice.get("type") not in TOOL_CHOICES or (choice["type"] == "tool" and "name" not in choice)):
        raise bad_request("tool_choice must be auto, any, none or a named tool", param="tool_choice")
    return anthropic_tool_choice(choice)


def _anthropic_param(param: str | None) -> str | None:
    """The chat plan's field names (OpenAI's) as this API calls them."""
    if param is None:
        return None
    param = re.sub(r"^tools\[(\d+)\]\.function\.parameters", r"tools.\1.input_schema", param)
    return re.sub(r"^tools\[(\d+)\]\.function\.name", r"tools.\1.name", param)


def stop_reason(last: TokenChunk, tool_use: bool = False) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence) of a finished generation."""
    if tool_use:
        return "tool_use", None
    if last.finish_reason == "length":
        return "max_tokens", None
    if last.stop_sequence is not None:
        return "stop_sequence", last.stop_sequence
    return "end_turn", None


def message(message_id: str, model: str, text: str | None, last: TokenChunk | None, input_tokens: int,
            calls: list[dict] | None = None) -> dict:  # fmt: skip
    """The whole message (text None and no calls: the empty one that opens a stream)."""
    reason, sequence = stop_reason(last, bool(calls)) if last is not None else (None, None)
    content = anthropic_content(text or "", calls) if calls else ([] if text is None else [{"type": "text", "text": text}])
    return {
        "id": message_id, "type": "message", "role": "assistant", "model": model,
        "content": content,
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


def closing_events(last: TokenChunk, calls: list[dict] | None = None, text_block: bool = True) -> list[tuple[str, dict]]:
    """The text block's end (when there is one), each tool_use block whole (its input in one delta), then the
    message's end."""
    reason, sequence = stop_reason(last, bool(calls))
    out = [("content_block_stop", {"type": "content_block_stop", "index": 0})] if text_block else []
    for i, block in enumerate(anthropic_content("", calls or []), start=int(text_block)):
        start = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
        delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
        out += [("content_block_start", {"type": "content_block_start", "index": i, "content_block": start}),
                ("content_block_delta", {"type": "content_block_delta", "index": i, "delta": delta}),
                ("content_block_stop", {"type": "content_block_stop", "index": i})]  # fmt: skip
    return out + [
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": sequence},
                           "usage": {"output_tokens": last.completion_tokens}}),
        ("message_stop", {"type": "message_stop"}),
    ]  # fmt: skip


def sse(name: str, data: dict) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n".encode()


async def events(generation: Submitted, message_id: str, model: str, plan: ChatPlan) -> AsyncIterator[bytes]:
    """Anthropic's order; a failure after the 200 ends the stream with an `error` event in Anthropic's shape.
    With tools the answer is held to its end (a call may start anywhere in it), then sent as its blocks."""
    last, held, holding = None, [], bool(plan.tool_names)
    try:
        for name, data in opening_events(message_id, model, generation.accepted.prompt_tokens):
            if not (holding and name == "content_block_start"):
                yield sse(name, data)
        async for last in generation:
            if holding:
                held.append(last.text)
            elif last.text:
                yield sse(*delta_event(last.text))
    except OpenAIError as exc:
        yield sse("error", anthropic_error(exc))
        return
    finally:
        await generation.aclose()
    assert last is not None
    log_finished(last)
    calls: list[dict] = []
    if holding:
        content, calls = read_answer(plan, "".join(held), last.finish_reason or "stop")
        if content:
            yield sse(*opening_events(message_id, model, 0)[1])
            yield sse(*delta_event(content))
    for name, data in closing_events(last, calls, text_block=not holding or bool(content)):
        yield sse(name, data)


def whole(message_id: str, model: str, plan: ChatPlan, text: str, last: TokenChunk) -> dict:
    if not plan.tool_names:
        return message(message_id, model, text, last, last.prompt_tokens)
    content, calls = read_answer(plan, text, last.finish_reason or "stop")
    return message(message_id, model, content or "", last, last.prompt_tokens, calls)


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
    fields, plan = translate(body)
    message_id = "msg_" + new_request_id().removeprefix("req-")
    generation = await start_generation(request, message_id, fields, messages=plan.messages, api="anthropic.messages",
                                        json_schema=plan.json_schema)  # fmt: skip
    stream = events(generation, message_id, body.model, plan) if body.stream else None
    return await answer(request, generation, stream, lambda text, last: whole(message_id, body.model, plan, text, last))


@router.post("/v1/messages/count_tokens")
async def count_tokens(request: Request) -> dict:
    fields, plan = translate(decode(await request.body()), count_only=True)
    return {"input_tokens": await count_prompt_tokens(request, fields.model, plan.messages)}
