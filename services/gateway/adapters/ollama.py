"""Ollama's API (/api/chat, /api/generate, /api/tags, /api/show, /api/ps, /api/version) at the root of the
gateway's port, so OLLAMA_HOST=host:port works unchanged. Streams are newline-delimited JSON (Ollama streams
unless told `"stream": false`). The translations are pure functions; the routes at the end are thin."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec
from fastapi import APIRouter, Request

from shared.generation import ChatMessage, TokenChunk
from shared.ids import new_request_id
from shared.models import ModelCard, UnknownModel, all_cards, get_card
from shared.state import ClusterState

from services.gateway.adapters.tool_shapes import ollama_format, ollama_tool_calls, ollama_turn
from services.gateway.completion_output import log_finished
from services.gateway.errors import OpenAIError, bad_request, model_not_found
from services.gateway.generate import answer, start_generation
from services.gateway.generation_client import Submitted
from services.gateway.generation_params import ChatPlan, grammar_of_response_format, plan_of_openai_shapes
from services.gateway.openai_schema import SamplingFields
from services.gateway.routing import tool_format
from services.gateway.tool_calls import read_answer

router = APIRouter()

# What /api/version answers: the Ollama API version whose shapes these routes follow (clients compare it).
OLLAMA_API_VERSION = "0.9.0"
NS = 1_000_000_000


class Options(msgspec.Struct, forbid_unknown_fields=True):
    """The options we honour; any other is a 400 naming it (num_ctx is accepted: the context is the model's)."""

    num_predict: int | None = None
    temperature: float | None = None
    seed: int | None = None
    top_p: float | None = None
    stop: list[str] | None = None
    num_ctx: int | None = None
    top_k: int | None = None
    min_p: float | None = None
    repeat_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None


class OllamaMessage(msgspec.Struct):
    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    images: list[str] | None = None
    tool_calls: list[dict] | None = None  # an assistant's earlier calls: [{"function": {"name", "arguments": {...}}}]
    tool_name: str | None = None  # a tool's answer: which tool


class ChatRequest(msgspec.Struct):
    model: str
    messages: list[OllamaMessage] = []
    stream: bool = True
    options: Options | None = None
    format: str | dict | None = None
    keep_alive: str | int | None = None
    tools: list[dict] | None = None  # OpenAI's function shape; Ollama has no tool_choice (always auto)


class GenerateBody(msgspec.Struct):
    model: str
    prompt: str = ""
    system: str | None = None
    raw: bool = False
    stream: bool = True
    options: Options | None = None
    format: str | dict | None = None
    images: list[str] | None = None
    keep_alive: str | int | None = None


class ModelName(msgspec.Struct):
    model: str | None = None
    name: str | None = None  # older clients send `name`


def sampling_fields(model: str, options: Options | None) -> SamplingFields:
    o = options or Options()
    # num_predict -1 (without end) and -2 (fill the context) both mean: up to the end of the context
    max_tokens = o.num_predict if o.num_predict is not None and o.num_predict > 0 else None
    return SamplingFields(model=model, max_tokens=max_tokens, temperature=o.temperature, top_p=o.top_p,
                          stop=o.stop, seed=o.seed, top_k=o.top_k, min_p=o.min_p, repetition_penalty=o.repeat_penalty,
                          presence_penalty=o.presence_penalty, frequency_penalty=o.frequency_penalty)  # fmt: skip


def response_format(format_: str | dict | None) -> dict | None:
    try:
        return ollama_format(format_)
    except ValueError as exc:
        raise bad_request(str(exc), param="format") from None


def chat_plan(body: ChatRequest) -> ChatPlan:
    """The request through the one chat plan: messages (tool turns too), tools (auto: Ollama has no
    tool_choice) and `format` as the grammar."""
    if not body.messages:
        raise bad_request("messages must not be empty", param="messages")
    for i, m in enumerate(body.messages):
        if m.images:
            raise bad_request(f"messages[{i}].images: images are not supported", param="images")
        for j, call in enumerate(m.tool_calls or []):
            function = call.get("function")
            if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                raise bad_request("a tool call needs function.name", param=f"messages[{i}].tool_calls[{j}].function.name")
    turns = [ollama_turn(msgspec.structs.asdict(m)) for m in body.messages]
    return plan_of_openai_shapes(body.model, turns, body.tools, None, response_format(body.format))


def generate_input(body: GenerateBody) -> dict:
    """/api/generate's prompt: through the chat template as a user turn (Ollama's default), or raw."""
    if body.images:
        raise bad_request("images are not supported", param="images")
    if body.raw:
        return {"prompt": (body.system or "") + body.prompt}
    system = [ChatMessage("system", body.system)] if body.system else []
    return {"messages": (*system, ChatMessage("user", body.prompt))}


def now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def piece(model: str, text: str, chat: bool, calls: list[dict] | None = None) -> dict:
    message = {"role": "assistant", "content": text} | ({"tool_calls": ollama_tool_calls(calls)} if calls else {})
    content = {"message": message} if chat else {"response": text}
    return {"model": model, "created_at": now(), **content, "done": False}


def done_fields(last: TokenChunk) -> dict:
    """The closing record: why it ended, the counts, and the runner's times in nanoseconds."""
    f = last.finished
    total = f.total_s if f else 0.0
    first = f.time_to_first_token_s if f and f.time_to_first_token_s is not None else total
    return {
        "done": True, "done_reason": "length" if last.finish_reason == "length" else "stop",
        "total_duration": int(total * NS), "load_duration": 0,
        "prompt_eval_count": last.prompt_tokens, "prompt_eval_duration": int(first * NS),
        "eval_count": last.completion_tokens, "eval_duration": int(max(0.0, total - first) * NS),
    }  # fmt: skip


def ndjson(data: dict) -> bytes:
    return (json.dumps(data, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


async def lines(generation: Submitted, model: str, plan: ChatPlan | None) -> AsyncIterator[bytes]:
    """One JSON line per piece, then the done record; a failure after the 200 is an {"error"} line (Ollama's).
    With tools the answer is held to its end (a call may start anywhere in it), then sent as one piece with its
    tool_calls, as Ollama sends a call."""
    last, held, holding, chat = None, [], plan is not None and bool(plan.tool_names), plan is not None
    try:
        async for last in generation:
            if holding:
                held.append(last.text)
            elif last.text:
                yield ndjson(piece(model, last.text, chat))
    except OpenAIError as exc:
        yield ndjson({"error": exc.message})
        return
    finally:
        await generation.aclose()
    assert last is not None
    log_finished(last)
    if holding:
        yield ndjson(whole_piece(model, plan, "".join(held), last))
    yield ndjson(piece(model, "", chat) | done_fields(last))


def whole_piece(model: str, plan: ChatPlan | None, text: str, last: TokenChunk) -> dict:
    """The answer as one piece: /api/generate's text, or a chat message with the tool calls read out of it."""
    if plan is None or not plan.tool_names:
        return piece(model, text, plan is not None)
    content, calls = read_answer(plan, text, last.finish_reason or "stop")
    return piece(model, content or "", True, calls)


def details(card: ModelCard) -> dict:
    fmt = "gguf" if card.source.__class__.__name__ == "PackagedGguf" else "mlx"
    return {"parent_model": "", "format": fmt, "family": card.architecture, "families": [card.architecture],
            "parameter_size": "", "quantization_level": ""}  # fmt: skip


def model_entry(card: ModelCard) -> dict:
    return {"name": card.model_id, "model": card.model_id, "modified_at": "1970-01-01T00:00:00Z",
            "size": card.storage_bytes, "digest": "", "details": details(card)}  # fmt: skip


def tags(recorded: Mapping[str, ModelCard]) -> dict:
    """The built-in models and every hub model or folder the cluster recorded a card for."""
    return {"models": [model_entry(card) for card in all_cards(recorded)]}


def running(state: ClusterState) -> dict:
    ready = [c for c in all_cards(state.models) if any(state.instance_ready(i.instance_id) for i in state.instances_of(c.model_id))]
    return {"models": [model_entry(c) | {"expires_at": "2999-01-01T00:00:00Z", "size_vram": 0,
                                          "context_length": c.context_length} for c in ready]}  # fmt: skip


def show(card: ModelCard) -> dict:
    arch = card.architecture
    return {
        "modelfile": "", "parameters": "", "template": "", "details": details(card),
        "model_info": {"general.architecture": arch, f"{arch}.context_length": card.context_length,
                       f"{arch}.block_count": card.n_layers, f"{arch}.embedding_length": card.hidden_size},
        "capabilities": ["completion", "tools"], "modified_at": "1970-01-01T00:00:00Z",
    }  # fmt: skip


def decode(raw: bytes, type_: type) -> Any:  # noqa: ANN401
    try:
        return msgspec.json.decode(raw, type=type_)
    except msgspec.ValidationError as exc:
        raise bad_request(f"invalid request body: {exc}") from None
    except msgspec.DecodeError as exc:
        raise bad_request(f"request body is not valid JSON: {exc}") from None


async def _serve(request: Request, fields: SamplingFields, stream: bool, plan: ChatPlan | None, **what):  # noqa: ANN003, ANN202
    """`plan`: a chat's (None for /api/generate)."""
    rid = "ollama-" + new_request_id().removeprefix("req-")
    api = "ollama.chat" if plan is not None else "ollama.generate"
    generation = await start_generation(request, rid, fields, api=api, **what)
    return await answer(request, generation, lines(generation, fields.model, plan) if stream else None,
                        lambda text, last: whole_piece(fields.model, plan, text, last) | done_fields(last),
                        "application/x-ndjson")  # fmt: skip


@router.post("/api/chat")
async def chat(request: Request):  # noqa: ANN201
    body = decode(await request.body(), ChatRequest)
    fields = sampling_fields(body.model, body.options)
    plan = chat_plan(body).reading(tool_format(request.app.state.gateway.follower.state, body.model))
    return await _serve(request, fields, body.stream, plan, messages=plan.messages, json_schema=plan.json_schema,
                        tools=plan.tools)


@router.post("/api/generate")
async def generate(request: Request):  # noqa: ANN201
    body = decode(await request.body(), GenerateBody)
    fields = sampling_fields(body.model, body.options)
    grammar = grammar_of_response_format(response_format(body.format))
    if not body.prompt and not body.system:  # Ollama's "load the model": ours are loaded by placement
        _card(body.model, request.app.state.gateway.follower.state.models)
        return {"model": body.model, "created_at": now(), "response": "", "done": True, "done_reason": "load"}
    return await _serve(request, fields, body.stream, None, json_schema=grammar, **generate_input(body))


def _card(model: str, recorded: Mapping[str, ModelCard]) -> ModelCard:
    try:
        return get_card(model, recorded)
    except UnknownModel:
        raise model_not_found(model) from None


@router.get("/api/tags")
async def list_tags(request: Request) -> dict:
    return tags(request.app.state.gateway.follower.state.models)


@router.get("/api/ps")
async def list_running(request: Request) -> dict:
    return running(request.app.state.gateway.follower.state)


@router.post("/api/show")
async def show_model(request: Request) -> dict:
    body = decode(await request.body(), ModelName)
    if not (body.model or body.name):
        raise bad_request("model is required", param="model")
    name = body.model or body.name or ""
    try:  # a hub model the cluster recorded a card for (ModelCardRecorded) is known as well as a built-in one
        return show(get_card(name, request.app.state.gateway.follower.state.models))
    except UnknownModel:
        raise model_not_found(name) from None


@router.get("/api/version")
async def version() -> dict:
    return {"version": OLLAMA_API_VERSION}
