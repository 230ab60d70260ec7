"""How a completion goes out: one server-sent-events writer for chat and text completions, and the whole
answer when not streamed; each kind (ChatShape, TextShape) only says how its chunks look."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

import msgspec
import structlog

from shared.generation import TokenChunk

from services.gateway.errors import OpenAIError
from services.gateway.generation_client import Submitted
from services.gateway.openai_schema import (
    chat_chunk,
    chat_completion,
    openai_finish_reason,
    text_completion,
    usage,
)

log = structlog.get_logger()


class ChatShape:
    def __init__(self, request_id: str, model: str) -> None:
        self.request_id, self.model, self.created = request_id, model, int(time.time())

    def opening(self) -> list[dict]:
        return [self._chunk({"role": "assistant", "content": ""}, None)]

    def pieces(self, text: str, finish: str | None) -> list[dict]:
        """A content delta, then the finish reason in a chunk of its own."""
        out = [self._chunk({"content": text}, None)] if text else []
        return out + ([self._chunk({}, finish)] if finish is not None else [])

    def usage_chunk(self, usage_: dict) -> dict:
        return self._chunk({}, None) | {"choices": [], "usage": usage_}

    def whole(self, text: str, finish: str, usage_: dict) -> dict:
        return chat_completion(self.request_id, self.model, text, finish, usage_)

    def _chunk(self, delta: dict, finish: str | None) -> dict:
        return chat_chunk(self.request_id, self.model, self.created, delta, finish)


class TextShape:
    def __init__(self, request_id: str, model: str) -> None:
        self.request_id, self.model = request_id, model

    def opening(self) -> list[dict]:
        return []

    def pieces(self, text: str, finish: str | None) -> list[dict]:
        return [text_completion(self.request_id, self.model, text, finish, None)] if text or finish else []

    def usage_chunk(self, usage_: dict) -> dict:
        return text_completion(self.request_id, self.model, "", None, usage_) | {"choices": []}

    def whole(self, text: str, finish: str, usage_: dict) -> dict:
        return text_completion(self.request_id, self.model, text, finish, usage_)


def usage_of(last: TokenChunk) -> dict:
    finished = last.finished
    drafted, accepted = (finished.drafted_tokens, finished.accepted_tokens) if finished else (0, 0)
    return usage(last.prompt_tokens, last.completion_tokens, last.cached_tokens, drafted, accepted)


def log_finished(last: TokenChunk) -> None:
    """What the runner measured of a finished request (the inference log and the dashboard read it from here)."""
    if last.finished is not None:
        log.info("finished", request=last.request_id, **msgspec.structs.asdict(last.finished))


async def sse_events(generation: Submitted, shape: ChatShape | TextShape, include_usage: bool) -> AsyncIterator[bytes]:
    """The stream of an accepted generation: its chunks, then usage if asked, then [DONE]. A failure after the
    200 ends the stream with an error event in OpenAI's error shape, and no [DONE]."""
    last = None
    try:
        for data in shape.opening():
            yield _event(data)
        async for last in generation:
            for data in shape.pieces(last.text, openai_finish_reason(last.finish_reason)):
                yield _event(data)
    except OpenAIError as exc:
        yield _event(exc.body())
        return
    finally:
        await generation.aclose()
    assert last is not None and last.finish_reason is not None
    log_finished(last)
    if include_usage:
        yield _event(shape.usage_chunk(usage_of(last)))
    yield _event("[DONE]")


def _event(data: dict | str) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {payload}\n\n".encode()
