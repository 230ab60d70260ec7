"""Ollama's API (/api/chat, /api/generate, /api/tags, /api/show, /api/ps, /api/version) at the root of the
gateway's port, so OLLAMA_HOST=host:port works unchanged. Streams are newline-delimited JSON (Ollama streams
unless told `"stream": false`). The translations are pure functions; the routes at the end are thin."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec
from fastapi import APIRouter, Request

from shared.generation import ChatMessage, TokenChunk
from shared.ids import new_request_id
from shared.models import MODEL_CARDS, ModelCard, UnknownModel, all_cards, get_card
from shared.state import ClusterState

from services.gateway.completion_output import log_finished
from services.gateway.errors import OpenAIError, bad_request, model_not_found
from services.gateway.generate import answer, start_generation
from services.gateway.generation_client import Submitted
from services.gateway.openai_schema import SamplingFields

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
    role: Literal["system", "user", "assistant"]
    content: str = ""
    images: list[str] | None = None


class ChatRequest(msgspec.Struct):
    model: str
    messages: list[OllamaMessage] = []
    stream: bool = True
    options: Options | None = None
    format: str | dict | None = None
    keep_alive: str | int | None = None
    tools: list[dict] | None = None  # refused for now: never silently ignored


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


def sampling_fields(model: str, options: Options | None, format_: str | dict | None) -> SamplingFields:
    if format_:
        raise bad_request("format is not supported yet", param="format")
    o = options or Options()
    # num_predict -1 (without end) and -2 (fill the context) both mean: up to the end of the context
    max_tokens = o.num_predict if o.num_predict is not None and o.num_predict > 0 else None
    return SamplingFields(model=model, max_tokens=max_tokens, temperature=o.temperature, top_p=o.top_p,
                          stop=o.stop, seed=o.seed, top_k=o.top_k, min_p=o.min_p, repetition_penalty=o.repeat_penalty,
                          presence_penalty=o.presence_penalty, frequency_penalty=o.frequency_penalty)  # fmt: skip


def chat_messages(messages: list[OllamaMessage]) -> tuple[ChatMessage, ...]:
    if not messages:
        raise bad_request("messages must not be empty", param="messages")
    for i, m in enumerate(messages):
        if m.images:
            raise bad_request(f"messages[{i}].images: images are not supported", param="images")
    return tuple(ChatMessage(m.role, m.content) for m in messages)


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


def piece(model: str, text: str, chat: bool) -> dict:
    content = {"message": {"role": "assistant", "content": text}} if chat else {"response": text}
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


async def lines(generation: Submitted, model: str, chat: bool) -> AsyncIterator[bytes]:
    """One JSON line per piece, then the done record; a failure after the 200 is an {"error"} line (Ollama's)."""
    last = None
    try:
        async for last in generation:
            if last.text:
                yield ndjson(piece(model, last.text, chat))
    except OpenAIError as exc:
        yield ndjson({"error": exc.message})
        return
    finally:
        await generation.aclose()
    assert last is not None
    log_finished(last)
    yield ndjson(piece(model, "", chat) | done_fields(last))


def details(card: ModelCard) -> dict:
    fmt = "gguf" if card.source.__class__.__name__ == "PackagedGguf" else "mlx"
    return {"parent_model": "", "format": fmt, "family": card.architecture, "families": [card.architecture],
            "parameter_size": "", "quantization_level": ""}  # fmt: skip


def model_entry(card: ModelCard) -> dict:
    return {"name": card.model_id, "model": card.model_id, "modified_at": "1970-01-01T00:00:00Z",
            "size": card.storage_bytes, "digest": "", "details": details(card)}  # fmt: skip


def tags() -> dict:
    return {"models": [model_entry(card) for card in MODEL_CARDS.values()]}


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
        "capabilities": ["completion"], "modified_at": "1970-01-01T00:00:00Z",
    }  # fmt: skip


def decode(raw: bytes, type_: type) -> Any:  # noqa: ANN401
    try:
        return msgspec.json.decode(raw, type=type_)
    except msgspec.ValidationError as exc:
        raise bad_request(f"invalid request body: {exc}") from None
    except msgspec.DecodeError as exc:
        raise bad_request(f"request body is not valid JSON: {exc}") from None


async def _serve(request: Request, fields: SamplingFields, stream: bool, chat: bool, **what):  # noqa: ANN003, ANN202
    rid = "ollama-" + new_request_id().removeprefix("req-")
    generation = await start_generation(request, rid, fields, api="ollama.chat" if chat else "ollama.generate", **what)
    return await answer(request, generation, lines(generation, fields.model, chat) if stream else None,
                        lambda text, last: piece(fields.model, text, chat) | done_fields(last), "application/x-ndjson")  # fmt: skip


@router.post("/api/chat")
async def chat(request: Request):  # noqa: ANN201
    body = decode(await request.body(), ChatRequest)
    if body.tools:
        raise bad_request("tools are not supported yet", param="tools")
    fields = sampling_fields(body.model, body.options, body.format)
    return await _serve(request, fields, body.stream, chat=True, messages=chat_messages(body.messages))


@router.post("/api/generate")
async def generate(request: Request):  # noqa: ANN201
    body = decode(await request.body(), GenerateBody)
    fields = sampling_fields(body.model, body.options, body.format)
    if not body.prompt and not body.system:  # Ollama's "load the model": ours are loaded by placement
        _card(body.model)
        return {"model": body.model, "created_at": now(), "response": "", "done": True, "done_reason": "load"}
    return await _serve(request, fields, body.stream, chat=False, **generate_input(body))


def _card(model: str) -> ModelCard:
    try:
        return get_card(model)
    except UnknownModel:
        raise model_not_found(model) from None


@router.get("/api/tags")
async def list_tags() -> dict:
    return tags()


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
