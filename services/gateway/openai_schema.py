"""The OpenAI request bodies we accept, decoded with msgspec, and the response shapes we produce."""

from __future__ import annotations

import re
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
    """Our extension: `"speculative": {"draft": "ngram", "tokens": k}` asks for prompt-lookup speculation; a model
    (or instance) id as the draft, for a draft model on an instance of its own (docs/speculative.md)."""

    draft: str = "ngram"
    tokens: int = 4


class TrifurcatedField(msgspec.Struct, forbid_unknown_fields=True):
    """Our extension: `"trifurcated": {...}` (or `true`) runs a validator and a draft beside the main model
    (docs/trifurcated.md; services/gateway/validator.py plans it)."""

    # None: the group's setting where the model has a trifurcated group (docs/trifurcated.md), else the default
    validator: str | None = None  # a model or instance id, or "deny-list"; default: the request's own model
    policy: str | None = None  # default "annotate"
    draft: str | None = None  # as speculative.draft, or "none"; default "ngram"
    tokens: int | None = None  # default 4
    deny: list[str] = []  # case-insensitive regexes: a match in a user message is an unsafe verdict at once


MAX_DRAFT_TOKENS = 16  # as the runner's (runner/serve/speculative.py), which checks it again


def speculation_of(spec: SpeculativeField) -> Speculation:
    """The field checked (a request's, or an instance's default in POST /instances)."""
    if not spec.draft:  # a draft model is resolved to an instance with the cluster's state (routing.py)
        raise bad_request("speculative.draft must be \"ngram\", a model or an instance id", param="speculative.draft")
    if not 1 <= spec.tokens <= MAX_DRAFT_TOKENS:
        raise bad_request(f"speculative.tokens must be between 1 and {MAX_DRAFT_TOKENS}", param="speculative.tokens")
    return Speculation(spec.draft, spec.tokens)


class StreamOptions(msgspec.Struct):
    include_usage: bool = False


MAX_N = 8  # choices per request: the batch's width
MAX_TOP_LOGPROBS = 20


class SamplingFields(msgspec.Struct, forbid_unknown_fields=True):
    """A field we do not know is a 400 naming it: never silently ignored."""

    model: str
    stream: bool = False
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None  # not OpenAI's; vLLM's and llama.cpp's extension (0 or -1: off)
    min_p: float | None = None  # an extension too
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None  # an extension (1: off)
    logit_bias: dict[str, float] | None = None  # token id (as a string, as OpenAI's) -> -100..100
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = 1
    stream_options: StreamOptions | None = None
    user: str | None = None  # an end-user id: only ever logged by OpenAI too
    speculative: SpeculativeField | None = None

    def logprob_request(self) -> tuple[bool, int]:
        """(logprobs asked for, how many alternatives per token): each endpoint has its own fields."""
        return False, 0

    def speculation(self) -> Speculation | None:
        return None if self.speculative is None else speculation_of(self.speculative)

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
        if not 1 <= self.n <= MAX_N:
            raise bad_request(f"n must be between 1 and {MAX_N}", param="n")
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4:
            raise bad_request("at most 4 stop sequences", param="stop")
        if any(not s for s in stops):
            raise bad_request("a stop sequence must not be empty", param="stop")
        logprobs, top_logprobs = self.logprob_request()
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            stop=tuple(stops),
            seed=self.seed,
            logprobs=logprobs,
            top_logprobs=top_logprobs,
            **self._shaping(),
        )

    def _shaping(self) -> dict:
        """top_k, min_p, the penalties and the logit bias, checked (each 400 names its field)."""
        top_k = 0 if self.top_k is None or self.top_k == -1 else self.top_k
        if top_k < 0:
            raise bad_request("top_k must be a positive integer, or 0 or -1 for off", param="top_k")
        if self.min_p is not None and not 0.0 <= self.min_p <= 1.0:
            raise bad_request("min_p must be in [0, 1]", param="min_p")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if value is not None and not -2.0 <= value <= 2.0:
                raise bad_request(f"{name} must be between -2 and 2", param=name)
        if self.repetition_penalty is not None and not 0.0 < self.repetition_penalty <= 10.0:
            raise bad_request("repetition_penalty must be in (0, 10]", param="repetition_penalty")
        return {
            "top_k": top_k,
            "min_p": self.min_p or 0.0,
            "presence_penalty": self.presence_penalty or 0.0,
            "frequency_penalty": self.frequency_penalty or 0.0,
            "repetition_penalty": 1.0 if self.repetition_penalty is None else self.repetition_penalty,
            "logit_bias": _logit_bias(self.logit_bias or {}),
        }

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


def _logit_bias(bias: dict[str, float]) -> tuple[tuple[int, float], ...]:
    """OpenAI's {"token id": bias}; the runner checks the ids against its vocabulary."""
    out = []
    for key, value in bias.items():
        if not key.isdigit():
            raise bad_request(f"logit_bias keys are token ids; {key!r} is not one", param="logit_bias")
        if not -100.0 <= value <= 100.0:
            raise bad_request(f"logit_bias values must be between -100 and 100 (token {key})", param="logit_bias")
        out.append((int(key), float(value)))
    return tuple(out)


class ChatCompletionRequest(SamplingFields):
    messages: list[InMessage] = []
    tools: list[ToolDef] | None = None
    tool_choice: str | dict | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    trifurcated: bool | TrifurcatedField | None = None

    def logprob_request(self) -> tuple[bool, int]:
        if self.top_logprobs is not None:
            if not 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS:
                raise bad_request(f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}", param="top_logprobs")
            if not self.logprobs:
                raise bad_request("top_logprobs needs logprobs: true", param="top_logprobs")
        return bool(self.logprobs), self.top_logprobs or 0


class CompletionRequest(SamplingFields):
    prompt: str | list[str] = ""
    logprobs: int | None = None  # the legacy API's: the alternatives per token (0: only the token's own)

    def logprob_request(self) -> tuple[bool, int]:
        if self.logprobs is None:
            return False, 0
        if not 0 <= self.logprobs <= MAX_TOP_LOGPROBS:
            raise bad_request(f"logprobs must be between 0 and {MAX_TOP_LOGPROBS}", param="logprobs")
        return True, self.logprobs


_UNKNOWN = re.compile(r"unknown field `([^`]*)`")
_MISSING = re.compile(r"missing required field `([^`]*)`")
_AT = re.compile(r" - at `\$\.?([^`]*)`$")


def invalid_field(message: str) -> str | None:
    """The request field a msgspec validation message is about, in OpenAI's `a.b[0].c` form."""
    at = _AT.search(message)
    path = at[1] if at else ""
    named = _UNKNOWN.search(message) or _MISSING.search(message)
    if named is not None:
        path = f"{path}.{named[1]}" if path else named[1]
    return path or None


def decode_body(body: bytes, type_: type) -> SamplingFields:
    try:
        return msgspec.json.decode(body, type=type_)
    except msgspec.ValidationError as exc:
        raise bad_request(f"invalid request body: {exc}", param=invalid_field(str(exc))) from None
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


def chat_chunk(request_id: str, model: str, created: int, delta: dict, finish_reason: str | None, index: int = 0) -> dict:
    return {
        "id": request_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }


def chat_completion(request_id: str, model: str, text: str, finish_reason: str, usage_: dict, index: int = 0) -> dict:
    return {
        "id": request_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": index,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": usage_,
    }


def text_completion(
    request_id: str, model: str, text: str, finish_reason: str | None, usage_: dict | None, index: int = 0
) -> dict:
    body = {
        "id": request_id,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": index, "text": text, "logprobs": None, "finish_reason": finish_reason}],
    }
    if usage_ is not None:
        body["usage"] = usage_
    return body


def openai_finish_reason(reason: str | None) -> str | None:
    """Our reasons -> OpenAI's: a cancelled generation is reported as 'stop' to whoever still listens."""
    return {"cancelled": "stop"}.get(reason or "", reason)
