"""The OpenAI request bodies we accept, decoded with msgspec, and the response shapes we produce."""

from __future__ import annotations

import time
from typing import Literal

import msgspec

from shared.generation import ChatMessage, SamplingParams, Speculation

from services.gateway.errors import bad_request


class TextPart(msgspec.Struct):
    type: str
    text: str = ""


class CallFunction(msgspec.Struct):
    name: str
    arguments: str = "{}"


class ToolCallIn(msgspec.Struct):
    function: CallFunction
    id: str = ""
    type: str = "function"


class InMessage(msgspec.Struct):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[TextPart] | None = None
    tool_calls: list[ToolCallIn] | None = None  # an assistant's earlier calls
    tool_call_id: str | None = None  # a tool's answer: to which call
    name: str | None = None

    @property
    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content if p.type == "text")
        return self.content or ""

    def as_chat_message(self) -> ChatMessage:
        role = "system" if self.role == "developer" else self.role
        return ChatMessage(role=role, content=self.text)


class FunctionDef(msgspec.Struct):
    name: str | None = None
    description: str | None = None
    parameters: dict | None = None
    strict: bool | None = None


class ToolDef(msgspec.Struct):
    type: str = "function"
    function: FunctionDef | None = None


class JsonSchemaFormat(msgspec.Struct):
    name: str | None = None
    schema: dict | None = None
    strict: bool | None = None
    description: str | None = None


class ResponseFormat(msgspec.Struct):
    type: str
    json_schema: JsonSchemaFormat | None = None


class SpeculativeField(msgspec.Struct):
    """Our extension: `"speculative": {"draft": "ngram", "tokens": k}` asks for prompt-lookup speculation."""

    draft: str = "ngram"
    tokens: int = 4


MAX_DRAFT_TOKENS = 16  # as the runner's (runner/serve/speculative.py), which checks it again


class StreamOptions(msgspec.Struct):
    include_usage: bool = False


class SamplingFields(msgspec.Struct):
    model: str
    stream: bool = False
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = 1
    stream_options: StreamOptions | None = None
    speculative: SpeculativeField | None = None

    def speculation(self) -> Speculation | None:
        spec = self.speculative
        if spec is None:
            return None
        if spec.draft != "ngram":
            raise bad_request(f"unknown draft {spec.draft!r}: only \"ngram\" (prompt lookup) is served",
                              param="speculative.draft")  # fmt: skip
        if not 1 <= spec.tokens <= MAX_DRAFT_TOKENS:
            raise bad_request(f"speculative.tokens must be between 1 and {MAX_DRAFT_TOKENS}", param="speculative.tokens")
        return Speculation("ngram", spec.tokens)

    def sampling(self, context_length: int) -> SamplingParams:
        max_tokens = self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
        if max_tokens is not None and max_tokens < 1:
            raise bad_request("max_tokens must be at least 1", param="max_tokens")
        if max_tokens is not None and max_tokens > context_length:
            raise bad_request(
                f"max_tokens is {max_tokens} but this model's context is {context_length} tokens",
                param="max_tokens",
                code="context_length_exceeded",
            )
        if self.temperature is not None and not 0.0 <= self.temperature <= 2.0:
            raise bad_request("temperature must be between 0 and 2", param="temperature")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise bad_request("top_p must be in (0, 1]", param="top_p")
        if self.n != 1:
            raise bad_request("only n=1 is supported", param="n")
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4:
            raise bad_request("at most 4 stop sequences", param="stop")
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            stop=tuple(stops),
            seed=self.seed,
        )

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(SamplingFields):
    messages: list[InMessage] = []
    tools: list[ToolDef] | None = None
    tool_choice: str | dict | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None


class CompletionRequest(SamplingFields):
    prompt: str | list[str] = ""


def decode_body(body: bytes, type_: type) -> SamplingFields:
    try:
        return msgspec.json.decode(body, type=type_)
    except msgspec.ValidationError as exc:
        raise bad_request(f"invalid request body: {exc}") from None
    except msgspec.DecodeError as exc:
        raise bad_request(f"request body is not valid JSON: {exc}") from None


def usage(
    prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0, drafted: int = 0, accepted: int = 0
) -> dict:
    """Speculation's drafted tokens are OpenAI's prediction tokens (accepted and rejected ones)."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
        "completion_tokens_details": {"accepted_prediction_tokens": accepted, "rejected_prediction_tokens": drafted - accepted},
        "speculative": {"drafted_tokens": drafted, "accepted_tokens": accepted},
    }


def chat_chunk(request_id: str, model: str, created: int, delta: dict, finish_reason: str | None) -> dict:
    return {
        "id": request_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }


def chat_completion(request_id: str, model: str, text: str, finish_reason: str, usage_: dict) -> dict:
    return {
        "id": request_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": usage_,
    }


def text_completion(request_id: str, model: str, text: str, finish_reason: str | None, usage_: dict | None) -> dict:
    body = {
        "id": request_id,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}],
    }
    if usage_ is not None:
        body["usage"] = usage_
    return body


def openai_finish_reason(reason: str | None) -> str | None:
    """Our reasons -> OpenAI's: a cancelled generation is reported as 'stop' to whoever still listens."""
    return {"cancelled": "stop"}.get(reason or "", reason)
