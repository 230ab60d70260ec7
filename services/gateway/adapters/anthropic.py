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
from services.gateway.openai_schema import SamplingFields, openai_finish_reason
from services.gateway.routing import tool_format
from services.gateway.tool_calls import AnswerPieces, Arguments, CallStart, Finish, Piece, Text, read_answer

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


def opening_events(message_id: str, model: str, input_tokens: int, text_block: bool = True) -> list[tuple[str, dict]]:
    """message_start, the text block's start (with tools a block opens with its first piece instead), ping."""
    start = [block_start(0, {"type": "text", "text": ""})] if text_block else []
    return [
        ("message_start", {"type": "message_start", "message": message(message_id, model, None, None, input_tokens)}),
        *start, ("ping", {"type": "ping"}),
    ]  # fmt: skip


def block_start(index: int, block: dict) -> tuple[str, dict]:
    return "content_block_start", {"type": "content_block_start", "index": index, "content_block": block}


def delta_event(text: str, index: int = 0) -> tuple[str, dict]:
    return "content_block_delta", {"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": text}}


def closing_events(last: TokenChunk, tool_use: bool = False, open_block: int | None = 0) -> list[tuple[str, dict]]:
    """The open block's end (when one is open), then the message's."""
    reason, sequence = stop_reason(last, tool_use)
    out = [("content_block_stop", {"type": "content_block_stop", "index": open_block})] if open_block is not None else []
    return out + [
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": sequence},
                           "usage": {"output_tokens": last.completion_tokens}}),
        ("message_stop", {"type": "message_stop"}),
    ]  # fmt: skip


class Blocks:
    """An answer's pieces (tool_calls.AnswerPieces) as Anthropic's content blocks, in order: a block starts with
    its first piece (a text block, or a tool_use block with its id, name and an empty input) and stops when the
    next starts or the answer ends; text goes as text_delta, a call's arguments as input_json_delta pieces."""

    def __init__(self, text_open: bool) -> None:
        self.open: int | None = 0 if text_open else None  # the index of the open block
        self.text = text_open  # whether the open block is a text block
        self.count = int(text_open)

    def events(self, piece: Piece) -> list[tuple[str, dict]]:
        if isinstance(piece, Text):
            out = [] if self.text else self._start({"type": "text", "text": ""})
            self.text = True
            return out + [delta_event(piece.text, self.open or 0)]
        if isinstance(piece, CallStart):
            self.text = False
            return self._start({"type": "tool_use", "id": piece.call_id, "name": piece.name, "input": {}})
        if isinstance(piece, Arguments):
            delta = {"type": "input_json_delta", "partial_json": piece.piece}
            return [("content_block_delta", {"type": "content_block_delta", "index": self.open, "delta": delta})]
        return []

    def _start(self, block: dict) -> list[tuple[str, dict]]:
        out = [("content_block_stop", {"type": "content_block_stop", "index": self.open})] if self.open is not None else []
        self.open, self.count = self.count, self.count + 1
        return out + [block_start(self.open, block)]


def sse(name: str, data: dict) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n".encode()


async def events(generation: Submitted, message_id: str, model: str, plan: ChatPlan) -> AsyncIterator[bytes]:
    """Anthropic's order; a failure after the 200 ends the stream with an `error` event in Anthropic's shape.
    The pieces come as Chat Completions streams them (tool_calls.AnswerPieces): a forced call's arguments as they
    are generated; under `auto` the text up to a `<tool_call>` as it comes, and the calls once the answer ends."""
    last, finish = None, "stop"
    reader, blocks = AnswerPieces(plan), Blocks(text_open=not plan.tool_names)
    try:
        for name, data in opening_events(message_id, model, generation.accepted.prompt_tokens, not plan.tool_names):
            yield sse(name, data)
        async for last in generation:
            for piece in reader.feed(last.text, openai_finish_reason(last.finish_reason)):
                finish = piece.reason if isinstance(piece, Finish) else finish
                for name, data in blocks.events(piece):
                    yield sse(name, data)
    except OpenAIError as exc:
        yield sse("error", anthropic_error(exc))
        return
    finally:
        await generation.aclose()
    assert last is not None
    log_finished(last)
    for name, data in closing_events(last, finish == "tool_calls", blocks.open):
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
    plan = plan.reading(tool_format(request.app.state.gateway.follower.state, body.model))
    message_id = "msg_" + new_request_id().removeprefix("req-")
    generation = await start_generation(request, message_id, fields, messages=plan.messages, api="anthropic.messages",
                                        json_schema=plan.json_schema, tools=plan.tools)  # fmt: skip
    stream = events(generation, message_id, body.model, plan) if body.stream else None
    return await answer(request, generation, stream, lambda text, last: whole(message_id, body.model, plan, text, last))


@router.post("/v1/messages/count_tokens")
async def count_tokens(request: Request) -> dict:
    fields, plan = translate(decode(await request.body()), count_only=True)
    plan = plan.reading(tool_format(request.app.state.gateway.follower.state, fields.model))
    return {"input_tokens": await count_prompt_tokens(request, fields.model, plan.messages, plan.tools)}
