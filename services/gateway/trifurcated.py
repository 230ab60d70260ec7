"""Trifurcated inference in the gateway (docs/trifurcated.md): the main generation (0) with its draft (+1) and a
validator (-1) judging the request at the same time. The verdict never delays an answer it agrees with: chunks
stream as they come, and only the end (the finish chunk, usage, [DONE]) waits for it; `block` turns an unsafe
verdict into an error (an error event in OpenAI's shape, no [DONE]; a 403 when not streamed)."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from shared.events import GROUP_TRITS
from shared.generation import ChatMessage, FinishedRequest, GenerateRequest, SamplingParams, TokenChunk
from shared.ids import InstanceId
from shared.inference_log import InferenceRecord
from shared.models import UnknownModel, get_card
from shared.state import ClusterState

from services.gateway.completion_output import Shape, _event, log_finished, usage_of, whole_of_choices
from services.gateway.errors import OpenAIError, model_not_found
from services.gateway.generate import gather, start_generation
from services.gateway.generation_params import ChatPlan
from services.gateway.inference_recorder import ObservedGeneration
from services.gateway.openai_schema import ChatCompletionRequest, SpeculativeField, openai_finish_reason
from services.gateway.routing import not_ready, pick_instance
from services.gateway.validator import (
    DENY_LIST,
    GUARD_MAX_TOKENS,
    VERDICT_SCHEMA,
    TrifurcatedPlan,
    Verdict,
    deny_verdict,
    guard_messages,
    parse_verdict,
)

TRIT_VALIDATOR, TRIT_DRAFT = GROUP_TRITS["validator"], GROUP_TRITS["draft"]


def blocked(verdict: Verdict) -> OpenAIError:
    return OpenAIError(403, f"the validator ({verdict.validator}) judged the request unsafe: {verdict.reason}",
                       code="validator_blocked", param="messages")  # fmt: skip


async def serve_trifurcated(request: Request, body: ChatCompletionRequest, plan: ChatPlan, tri: TrifurcatedPlan,
                            shape: Shape):  # noqa: ANN201  # fmt: skip
    """Every refusal (an unknown validator, no instance, the main model's) is raised before any byte is sent."""
    seed = body.seed if body.seed is not None else random.getrandbits(32)  # one seed for the three rows
    speculative = SpeculativeField(tri.draft, tri.tokens)  # "none": no speculation, not even the instance's default
    main_body = msgspec.structs.replace(body, seed=seed, speculative=speculative, trifurcated=None)
    target = None if tri.validator == DENY_LIST else _validator_target(request, tri.validator)
    rid = shape.request_id
    main = await start_generation(request, rid, main_body, messages=plan.messages, json_schema=plan.json_schema,
                                  instance=tri.main_instance, tools=plan.tools)  # fmt: skip
    assert isinstance(main, ObservedGeneration)
    state = request.app.state.gateway.follower.state
    after = main.first_token if target is not None and shares_devices(state, target[0], main.instance_id) else None
    judging = asyncio.create_task(_judge(request, rid, tri, plan.messages, seed, target, after))
    logprobs = body.logprob_request()[0]
    if body.stream:
        events = _stream(request, main, shape, judging, tri, body.include_usage, logprobs, seed)
        return StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    try:
        return await _whole(request, main, shape, judging, tri, logprobs, seed)
    finally:
        await main.aclose()
        judging.cancel()


def shares_devices(state: ClusterState, one: str, other: str) -> bool:
    """Whether two instances have a node in common (the same instance does)."""
    a, b = state.instances.get(InstanceId(one)), state.instances.get(InstanceId(other))
    return a is not None and b is not None and bool({s.node_id for s in a.shards} & {s.node_id for s in b.shards})


def _validator_target(request: Request, name: str) -> tuple[str, str]:
    """(instance id, model id) of the validator: an instance named by its id, or a ready instance of a model."""
    state = request.app.state.gateway.follower.state
    if name in state.instances:
        if not state.instance_ready(name):
            raise not_ready(state, InstanceId(name))
        return name, state.instances[name].model_id
    try:
        card = get_card(name, state.models)
    except UnknownModel:
        raise model_not_found(name) from None
    return pick_instance(state, card.model_id, request.app.state.gateway.client.next_turn()), card.model_id


async def _judge(request: Request, rid: str, tri: TrifurcatedPlan, messages: tuple[ChatMessage, ...], seed: int,
                 target: tuple[str, str] | None, after: asyncio.Event | None) -> Verdict:  # fmt: skip
    """The verdict, recorded as the -1 row; a validator that fails gives an `error` verdict, never an exception.
    A guard on the main model's own devices starts `after` its first token: in the same batch (or on the same
    cores) its prefill would only delay the answer's first token, and the answer's end waits for it anyway."""
    gateway = request.app.state.gateway
    started = time.monotonic()
    denied = deny_verdict(tri.deny, messages)
    if denied is not None or target is None:
        verdict = denied or Verdict("safe", "no deny pattern matches", DENY_LIST)
        gateway.recorder.publish(side_record(f"{rid}-validator", "validator", DENY_LIST, None, seed, TRIT_VALIDATOR,
                                             (time.monotonic() - started) * 1000))  # fmt: skip
        return verdict
    instance_id, model = target
    if after is not None:
        await after.wait()
    ask = GenerateRequest(f"{rid}-validator", model, SamplingParams(max_tokens=GUARD_MAX_TOKENS, temperature=0.0, seed=seed),
                          messages=guard_messages(messages), json_schema=json.dumps(VERDICT_SCHEMA))  # fmt: skip
    try:
        generation = await gateway.recorder.submit(gateway.client, instance_id, ask, False, "validator", TRIT_VALIDATOR)
        try:
            text = "".join([chunk.text async for chunk in generation])
        finally:
            await generation.aclose()
    except OpenAIError as exc:
        return Verdict("error", f"the validator failed: {exc.message}", tri.validator)
    return parse_verdict(text, tri.validator)


def side_record(id_: str, api: str, model: str, instance: str | None, seed: int, trit: int, latency_ms: float,
                finished: FinishedRequest | None = None, stream: bool = False) -> InferenceRecord:  # fmt: skip
    """A row of the request's other roles that no runner generated: the deny-list's verdict, the draft's tokens
    (the draft's row counts what it proposed as its completion tokens; usage has what was kept)."""
    return InferenceRecord(
        id=id_, timestamp=time.time(), api=api, model=model, instance=instance, status=200,
        finish_reason=finished.finish_reason if finished else "stop", error=None,
        prompt_tokens=finished.prompt_tokens if finished else 0, cached_tokens=0,
        completion_tokens=finished.drafted_tokens if finished else 0, latency_ms=latency_ms,
        time_to_first_token_ms=None, decode_tokens_per_s=None, devices=finished.device_count if finished else 0,
        strategy=finished.strategy if finished else None, seed=seed, trit=trit, stream=stream,
    )  # fmt: skip


def _record_draft(request: Request, rid: str, tri: TrifurcatedPlan, main: ObservedGeneration, last: TokenChunk,
                  seed: int, stream: bool) -> None:  # fmt: skip
    if tri.draft == "none" or last.finished is None:
        return
    latency = last.finished.total_s * 1000
    record = side_record(f"{rid}-draft", "speculative.draft", tri.draft, main.instance_id, seed, TRIT_DRAFT, latency,
                         last.finished, stream)  # fmt: skip
    request.app.state.gateway.recorder.publish(record)


async def _whole(request: Request, main: ObservedGeneration, shape: Shape, judging: asyncio.Task[Verdict],
                 tri: TrifurcatedPlan, logprobs: bool, seed: int):  # noqa: ANN202  # fmt: skip
    gathering = asyncio.create_task(gather(request, main))
    await asyncio.wait({gathering, judging}, return_when=asyncio.FIRST_COMPLETED)
    if judging.done() and judging.result().unsafe and tri.policy == "block":
        gathering.cancel()  # an unsafe verdict before the end: the main generation stops now
        await asyncio.gather(gathering, return_exceptions=True)
        main.end_with(blocked(judging.result()))
        raise blocked(judging.result())
    gathered = await gathering
    if gathered is None:
        return JSONResponse({}, status_code=499)
    verdict = await judging
    _text, last = gathered
    log_finished(last)
    _record_draft(request, shape.request_id, tri, main, last, seed, False)
    if verdict.unsafe and tri.policy == "block":
        main.end_with(blocked(verdict))
        raise blocked(verdict)
    return whole_of_choices([shape], [gathered], logprobs) | {"validator": verdict.view()}


async def _stream(request: Request, main: ObservedGeneration, shape: Shape, judging: asyncio.Task[Verdict],
                  tri: TrifurcatedPlan, include_usage: bool, logprobs: bool, seed: int) -> AsyncIterator[bytes]:  # fmt: skip
    """Chunks as they come; the finish chunk waits for the verdict and carries it; an unsafe verdict under
    `block` ends the stream with an error event at once, and no [DONE]."""
    chunks = aiter(main)
    try:
        for data in shape.opening():
            yield _event(data)
        async for piece in _pieces(chunks, shape, judging, tri, logprobs):
            if isinstance(piece, TokenChunk):
                log_finished(piece)
                _record_draft(request, shape.request_id, tri, main, piece, seed, True)
                if include_usage:
                    yield _event(shape.usage_chunk(usage_of(piece)) | {"validator": judging.result().view()})
                yield _event("[DONE]")
                return
            yield _event(piece)
    except OpenAIError as exc:
        if exc.code == "validator_blocked":
            main.end_with(exc)
        yield _event(exc.body() | ({"validator": judging.result().view()} if exc.code == "validator_blocked" else {}))
    finally:
        judging.cancel()
        await main.aclose()


async def _pieces(chunks: AsyncIterator[TokenChunk], shape: Shape, judging: asyncio.Task[Verdict],
                  tri: TrifurcatedPlan, logprobs: bool) -> AsyncIterator[dict | TokenChunk]:  # fmt: skip
    """The stream's chunk bodies, then the last TokenChunk once the verdict agrees; raises `blocked` for an unsafe
    verdict under `block` as soon as it comes."""
    block = tri.policy == "block"
    next_chunk: asyncio.Future[TokenChunk] = asyncio.ensure_future(anext(chunks))
    try:
        while True:
            waiting: set[asyncio.Future[Any]] = {next_chunk} if judging.done() else {next_chunk, judging}
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if judging.done() and block and judging.result().unsafe:
                raise blocked(judging.result())
            if not next_chunk.done():
                continue
            chunk = next_chunk.result()
            finish = openai_finish_reason(chunk.finish_reason)
            if finish is not None:
                verdict = await judging
                if block and verdict.unsafe:
                    raise blocked(verdict)
            pieces = shape.pieces(chunk.text, finish)
            if pieces and logprobs:
                pieces[0]["choices"][0]["logprobs"] = shape.logprobs(list(chunk.logprobs))
            if finish is not None and pieces:
                pieces[-1]["validator"] = judging.result().view()
            for piece in pieces:
                yield piece
            if finish is not None:
                yield chunk
                return
            next_chunk = asyncio.ensure_future(anext(chunks))
    finally:
        if not next_chunk.done():
            next_chunk.cancel()
            await asyncio.gather(next_chunk, return_exceptions=True)
