"""OpenAI Responses (POST /v1/responses) onto the one generation contract: text in and out, streamed as the
Responses events. Nothing is stored (no previous_response_id). The translations are pure; the route is thin."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Literal

import msgspec
from fastapi import APIRouter, Request

from shared.generation import TokenChunk
from shared.ids import new_request_id

from services.gateway.adapters.tool_shapes import responses_items, responses_output, responses_tools
from services.gateway.completion_output import log_finished
from services.gateway.errors import OpenAIError, bad_request
from services.gateway.generate import answer, start_generation
from services.gateway.generation_client import Submitted
from services.gateway.generation_params import ChatPlan, plan_of_openai_shapes
from services.gateway.openai_schema import SamplingFields, openai_finish_reason
from services.gateway.routing import tool_format
from services.gateway.tool_calls import AnswerPieces, Arguments, CallStart, Finish, Piece, Text, read_answer

router = APIRouter()


class Part(msgspec.Struct):
    type: str
    text: str = ""


class Item(msgspec.Struct):
    role: Literal["user", "assistant", "system", "developer"] | None = None
    content: str | list[Part] | None = None
    type: str = "message"
    # function_call and function_call_output items (an earlier call of the model, and its result)
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None
    output: str | None = None
    id: str | None = None
    status: str | None = None


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
    tools: list[dict] | None = None
    tool_choice: str | dict | None = None
    parallel_tool_calls: bool | None = None


TEXT_PARTS = ("input_text", "output_text", "text")


def _item_turns(i: int, item: Item) -> list[dict]:
    """One input item in Chat Completions' message shape."""
    if item.type in ("function_call", "function_call_output"):
        needs = ("call_id", "name") if item.type == "function_call" else ("call_id",)
        for field in needs:
            if getattr(item, field) is None:
                raise bad_request(f"a {item.type} item needs {field}", param=f"input[{i}].{field}")
        return responses_items([{k: v for k, v in msgspec.structs.asdict(item).items() if v is not None}])
    if item.type != "message" or item.role is None:
        raise bad_request(f"input[{i}]: items of type {item.type!r} are not supported", param=f"input[{i}].type")
    parts = item.content if isinstance(item.content, list) else [Part("input_text", item.content or "")]
    for j, part in enumerate(parts):
        if part.type not in TEXT_PARTS:
            raise bad_request(f"parts of type {part.type!r} are not supported", param=f"input[{i}].content[{j}].type")
    role = "system" if item.role == "developer" else item.role
    return [{"role": role, "content": "".join(p.text for p in parts)}]


def translate(body: ResponsesRequest) -> tuple[SamplingFields, ChatPlan]:
    if body.previous_response_id is not None:
        raise bad_request("previous_response_id is not supported: responses are not stored", param="previous_response_id")
    if isinstance(body.input, str):
        turns = [{"role": "user", "content": body.input}] if body.input else []
    else:
        turns = [turn for i, item in enumerate(body.input) for turn in _item_turns(i, item)]
    if not turns:
        raise bad_request("input must not be empty", param="input")
    system = [{"role": "system", "content": body.instructions}] if body.instructions else []
    try:
        plan = plan_of_openai_shapes(body.model, system + turns, _tools(body.tools or []), _tool_choice(body.tool_choice))
    except OpenAIError as exc:  # the chat plan names OpenAI's nested tool fields; this API's are flat
        exc.param = exc.param and exc.param.replace(".function.", ".")
        raise
    fields = SamplingFields(model=body.model, max_tokens=body.max_output_tokens, temperature=body.temperature,
                            top_p=body.top_p)  # fmt: skip
    return fields, plan


def _tools(tools: list[dict]) -> list[dict]:
    for i, tool in enumerate(tools):
        if tool.get("type") != "function":
            raise bad_request(f"tools of type {tool.get('type')!r} are not supported (only function)", param=f"tools[{i}].type")
        if not isinstance(tool.get("name"), str) or not tool["name"]:
            raise bad_request("a function tool needs a name", param=f"tools[{i}].name")
    return responses_tools(tools)


def _tool_choice(choice: str | dict | None) -> str | dict | None:
    """Responses' {"type": "function", "name": ...} is Chat Completions' {"type": "function", "function": {...}}."""
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    return choice


def output_item(item_id: str, text: str | None) -> dict:
    """The assistant message item (text None: the empty one a stream opens)."""
    content = [] if text is None else [{"type": "output_text", "text": text, "annotations": []}]
    status = "in_progress" if text is None else "completed"
    return {"type": "message", "id": item_id, "status": status, "role": "assistant", "content": content}


def response(rid: str, body: ResponsesRequest, created: int, text: str | None, last: TokenChunk | None,
             calls: list[dict] | None = None, streamed: list[dict] | None = None, cut: bool = False) -> dict:  # fmt: skip
    """The response object (last None: the one a stream opens); the output is the text's message item (none when
    the answer is only calls), then a function_call item per call; or the items a stream sent (`streamed`, `cut`
    when the answer ran out of tokens)."""
    incomplete = last is not None and (cut or (streamed is None and last.finish_reason == "length" and not calls))
    usage = None
    if last is not None:
        usage = {
            "input_tokens": last.prompt_tokens, "input_tokens_details": {"cached_tokens": last.cached_tokens},
            "output_tokens": last.completion_tokens, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": last.prompt_tokens + last.completion_tokens,
        }  # fmt: skip
    items = [] if text is None or (calls and not text) else [output_item("msg_" + rid.removeprefix("resp_"), text)]
    return {
        "id": rid, "object": "response", "created_at": created, "model": body.model,
        "status": "in_progress" if last is None else ("incomplete" if incomplete else "completed"),
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        "error": None, "instructions": body.instructions, "max_output_tokens": body.max_output_tokens,
        "temperature": body.temperature, "top_p": body.top_p, "metadata": body.metadata or {},
        "output": items + responses_output(calls or []) if streamed is None else streamed,
        "parallel_tool_calls": bool(body.parallel_tool_calls), "tools": body.tools or [], "store": False,
        "tool_choice": body.tool_choice or ("auto" if body.tools else "none"),
        "text": {"format": {"type": "text"}}, "truncation": "disabled", "usage": usage,
    }  # fmt: skip


class StreamShape:
    """The Responses stream's events on plain data, numbered in order. Output items open with their first piece
    (tool_calls.AnswerPieces): the assistant message with its first text (without `tools` it opens at once), a
    function_call item with its call (arguments ""), whose arguments then go as function_call_arguments.delta
    pieces as they come; an item is done when the next opens or the answer ends, then the finished response
    holds every item."""

    def __init__(self, rid: str, body: ResponsesRequest, created: int, tools: bool = False) -> None:
        self.rid, self.body, self.created, self.tools = rid, body, created, tools
        self.items: list[dict] = []  # the output items opened so far, the last one open until `_done`
        self.parts: list[str] = []  # the open message item's text
        self.seq = 0

    def opening(self) -> list[dict]:
        start = response(self.rid, self.body, self.created, None, None)
        events = [{"type": "response.created", "response": start}, {"type": "response.in_progress", "response": start}]
        return self._numbered(events + ([] if self.tools else self._added_message()))

    def feed(self, piece: Piece) -> list[dict]:
        events: list[dict] = []
        if isinstance(piece, Text):
            if not self.items or self.items[-1]["type"] != "message" or self.items[-1]["status"] != "in_progress":
                events += self._done() + self._added_message()
            self.parts.append(piece.text)
            events.append({"type": "response.output_text.delta", **self._at(), "delta": piece.text, "logprobs": []})
        elif isinstance(piece, CallStart):
            events += self._done()
            call = {"id": piece.call_id, "function": {"name": piece.name, "arguments": ""}}
            self.items.append(responses_output([call])[0] | {"status": "in_progress"})
            events.append({"type": "response.output_item.added", "output_index": len(self.items) - 1, "item": dict(self.items[-1])})
        elif isinstance(piece, Arguments):
            self.items[-1]["arguments"] += piece.piece
            events.append({"type": "response.function_call_arguments.delta", **self._at(), "delta": piece.piece})
        return self._numbered(events)

    def delta(self, text: str) -> list[dict]:
        return self.feed(Text(text))

    def closing(self, last: TokenChunk, finish: str = "stop") -> list[dict]:
        """The open item done, then the finished response (`finish`: OpenAI's reason; "length" is incomplete)."""
        cut = finish == "length"
        events = self._done(cut)
        final = response(self.rid, self.body, self.created, None, last, streamed=self.items, cut=cut)
        return self._numbered(events + [{"type": "response.incomplete" if cut else "response.completed", "response": final}])

    def _added_message(self) -> list[dict]:
        index = len(self.items)
        item_id = "msg_" + self.rid.removeprefix("resp_") + (f"_{index}" if index else "")
        self.items.append(output_item(item_id, None))
        self.parts = []
        empty = {"type": "output_text", "text": "", "annotations": []}
        return [
            {"type": "response.output_item.added", "output_index": index, "item": dict(self.items[-1])},
            {"type": "response.content_part.added", **self._at(), "part": empty},
        ]  # fmt: skip

    def _at(self) -> dict:
        at = {"item_id": self.items[-1]["id"], "output_index": len(self.items) - 1}
        return at | ({"content_index": 0} if self.items[-1]["type"] == "message" else {})

    def _done(self, cut: bool = False) -> list[dict]:
        """The open item's closing events (none when no item is open)."""
        if not self.items or self.items[-1]["status"] != "in_progress":
            return []
        item, at = self.items[-1], self._at()
        if item["type"] == "message":
            text = "".join(self.parts)
            self.items[-1] = output_item(item["id"], text)
            return [
                {"type": "response.output_text.done", **at, "text": text, "logprobs": []},
                {"type": "response.content_part.done", **at, "part": {"type": "output_text", "text": text, "annotations": []}},
                {"type": "response.output_item.done", "output_index": at["output_index"], "item": self.items[-1]},
            ]  # fmt: skip
        item["status"] = "incomplete" if cut else "completed"
        return [
            {"type": "response.function_call_arguments.done", **at, "arguments": item["arguments"]},
            {"type": "response.output_item.done", "output_index": at["output_index"], "item": dict(item)},
        ]  # fmt: skip

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


async def events(generation: Submitted, shape: StreamShape, plan: ChatPlan) -> AsyncIterator[bytes]:
    """The pieces as Chat Completions streams them (tool_calls.AnswerPieces: a forced call's arguments as they are
    generated; under `auto` the text up to a `<tool_call>` as it comes, the calls once the answer ends); a failure
    after the 200 ends the stream with an `error` event."""
    last, finish, reader = None, "stop", AnswerPieces(plan)
    try:
        for event in shape.opening():
            yield sse(event)
        async for last in generation:
            for piece in reader.feed(last.text, openai_finish_reason(last.finish_reason)):
                finish = piece.reason if isinstance(piece, Finish) else finish
                for event in shape.feed(piece):
                    yield sse(event)
    except OpenAIError as exc:
        for event in shape.error(exc):
            yield sse(event)
        return
    finally:
        await generation.aclose()
    assert last is not None
    log_finished(last)
    for event in shape.closing(last, finish):
        yield sse(event)


def whole(rid: str, body: ResponsesRequest, plan: ChatPlan, text: str, last: TokenChunk) -> dict:
    if not plan.tool_names:
        return response(rid, body, int(time.time()), text, last)
    content, calls = read_answer(plan, text, last.finish_reason or "stop")
    return response(rid, body, int(time.time()), content or "", last, calls)


@router.post("/v1/responses")
async def create_response(request: Request):  # noqa: ANN201
    try:
        body = msgspec.json.decode(await request.body(), type=ResponsesRequest)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise bad_request(f"invalid request body: {exc}") from None
    fields, plan = translate(body)
    plan = plan.reading(tool_format(request.app.state.gateway.follower.state, body.model))
    rid = "resp_" + new_request_id().removeprefix("req-")
    generation = await start_generation(request, rid, fields, messages=plan.messages, api="responses",
                                        json_schema=plan.json_schema, tools=plan.tools)  # fmt: skip
    shape = StreamShape(rid, body, int(time.time()), tools=bool(plan.tool_names))
    stream = events(generation, shape, plan) if body.stream else None
    return await answer(request, generation, stream, lambda text, last: whole(rid, body, plan, text, last))
