"""How a completion goes out: one server-sent-events writer for chat and text completions (one choice or `n`),
and the whole answer when not streamed; each kind (ChatShape, TextShape) only says how its chunks look."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import msgspec
import structlog

from shared.generation import TokenChunk, TokenLogprob

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
    def __init__(self, request_id: str, model: str, index: int = 0) -> None:
        self.request_id, self.model, self.created, self.index = request_id, model, int(time.time()), index

    def opening(self) -> list[dict]:
        return [self._chunk({"role": "assistant", "content": ""}, None)]

    def pieces(self, text: str, finish: str | None) -> list[dict]:
        """A content delta, then the finish reason in a chunk of its own."""
        out = [self._chunk({"content": text}, None)] if text else []
        return out + ([self._chunk({}, finish)] if finish is not None else [])

    def usage_chunk(self, usage_: dict) -> dict:
        return self._chunk({}, None) | {"choices": [], "usage": usage_}

    def whole(self, text: str, finish: str, usage_: dict) -> dict:
        return chat_completion(self.request_id, self.model, text, finish, usage_, self.index)

    def logprobs(self, entries: list[TokenLogprob]) -> dict:
        """OpenAI's chat `logprobs` object for these tokens."""
        return {"content": [chat_logprob(e) for e in entries], "refusal": None}

    def _chunk(self, delta: dict, finish: str | None) -> dict:
        return chat_chunk(self.request_id, self.model, self.created, delta, finish, self.index)


class TextShape:
    def __init__(self, request_id: str, model: str, index: int = 0) -> None:
        self.request_id, self.model, self.index = request_id, model, index
        self.offset = 0  # characters of the text so far: the legacy logprobs' text_offset

    def opening(self) -> list[dict]:
        return []

    def pieces(self, text: str, finish: str | None) -> list[dict]:
        if not (text or finish):
            return []
        return [text_completion(self.request_id, self.model, text, finish, None, self.index)]

    def usage_chunk(self, usage_: dict) -> dict:
        return text_completion(self.request_id, self.model, "", None, usage_) | {"choices": []}

    def whole(self, text: str, finish: str, usage_: dict) -> dict:
        return text_completion(self.request_id, self.model, text, finish, usage_, self.index)

    def logprobs(self, entries: list[TokenLogprob]) -> dict:
        """The legacy Completions `logprobs` object: parallel lists."""
        offsets = []
        for e in entries:
            offsets.append(self.offset)
            self.offset += len(e.token)
        return {
            "tokens": [e.token for e in entries],
            "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [{t.token: t.logprob for t in e.top} for e in entries],
            "text_offset": offsets,
        }


Shape = ChatShape | TextShape


def chat_logprob(entry: TokenLogprob) -> dict:
    top = [{"token": t.token, "logprob": t.logprob, "bytes": t.bytes} for t in entry.top]
    return {"token": entry.token, "logprob": entry.logprob, "bytes": entry.bytes, "top_logprobs": top}


def with_logprobs(body: dict, shape: Shape, entries: list[TokenLogprob] | None) -> dict:
    """A body (a chunk or the whole answer) with its one choice's logprobs, when they were asked for."""
    if entries is not None:
        body["choices"][0]["logprobs"] = shape.logprobs(entries)
    return body


def usage_of(last: TokenChunk) -> dict:
    finished = last.finished
    drafted, accepted = (finished.drafted_tokens, finished.accepted_tokens) if finished else (0, 0)
    return usage(last.prompt_tokens, last.completion_tokens, last.cached_tokens, drafted, accepted)


def usage_of_choices(lasts: list[TokenChunk]) -> dict:
    """Every choice generated from the same prompt: the prompt counts once, the completions add up."""
    first = lasts[0]
    finished = [last.finished for last in lasts if last.finished is not None]
    drafted = sum(f.drafted_tokens for f in finished)
    accepted = sum(f.accepted_tokens for f in finished)
    return usage(first.prompt_tokens, sum(last.completion_tokens for last in lasts), first.cached_tokens, drafted, accepted)


def whole_of_choices(shapes: list[Shape], gathered: list[tuple[str, TokenChunk]], logprobs: bool) -> dict:
    """The answer of `n` choices: the first's body with every choice in it, in order, and the summed usage."""
    lasts = [last for _text, last in gathered]
    bodies = [
        with_logprobs(
            shape.whole(text, openai_finish_reason(last.finish_reason) or "stop", usage_of(last)),
            shape, last.logprobs if logprobs else None,
        )
        for shape, (text, last) in zip(shapes, gathered, strict=True)
    ]  # fmt: skip
    return bodies[0] | {"choices": [b["choices"][0] for b in bodies], "usage": usage_of_choices(lasts)}


def log_finished(last: TokenChunk) -> None:
    """What the runner measured of a finished request (the inference log and the dashboard read it from here)."""
    if last.finished is not None:
        log.info("finished", request=last.request_id, **msgspec.structs.asdict(last.finished))


async def sse_events(generation: Submitted, shape: Shape, include_usage: bool, logprobs: bool = False) -> AsyncIterator[bytes]:
    """The stream of an accepted generation: its chunks, then usage if asked, then [DONE]. A failure after the
    200 ends the stream with an error event in OpenAI's error shape, and no [DONE]."""
    async for data in sse_choices([generation], [shape], include_usage, logprobs):
        yield data


async def sse_choices(
    generations: list[Submitted], shapes: list[Shape], include_usage: bool, logprobs: bool = False
) -> AsyncIterator[bytes]:
    """The chunks of every choice as they come (each carries its choice's index), then one usage, then [DONE]."""
    lasts: list[TokenChunk | None] = [None] * len(generations)
    pending: list[list[TokenLogprob]] = [[] for _ in generations]
    try:
        for shape in shapes:
            for data in shape.opening():
                yield _event(data)
        async for i, chunk in _merged(generations):
            lasts[i] = chunk
            pending[i] += chunk.logprobs
            pieces = shapes[i].pieces(chunk.text, openai_finish_reason(chunk.finish_reason))
            if pieces and logprobs:  # a chunk without a piece (held text) passes its tokens' logprobs on
                with_logprobs(pieces[0], shapes[i], pending[i])
                pending[i] = []
            for data in pieces:
                yield _event(data)
    except OpenAIError as exc:
        yield _event(exc.body())
        return
    finally:
        for generation in generations:
            await generation.aclose()
    ended = [last for last in lasts if last is not None and last.finish_reason is not None]
    assert len(ended) == len(generations)
    for last in ended:
        log_finished(last)
    if include_usage:
        yield _event(shapes[0].usage_chunk(usage_of_choices(ended)))
    yield _event("[DONE]")


async def _merged(generations: list[Submitted]) -> AsyncIterator[tuple[int, TokenChunk]]:
    """(choice index, chunk) from every generation in the order they arrive; the first error ends it."""
    if len(generations) == 1:
        async for chunk in generations[0]:
            yield 0, chunk
        return
    queue: asyncio.Queue[tuple[int, TokenChunk] | BaseException | None] = asyncio.Queue()

    async def pump(i: int, generation: Submitted) -> None:
        try:
            async for chunk in generation:
                queue.put_nowait((i, chunk))
            queue.put_nowait(None)
        except Exception as exc:  # noqa: BLE001 - handed to the reader, which raises it
            queue.put_nowait(exc)

    tasks = [asyncio.create_task(pump(i, g)) for i, g in enumerate(generations)]
    try:
        running = len(tasks)
        while running:
            item = await queue.get()
            if item is None:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _event(data: dict | str) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {payload}\n\n".encode()
