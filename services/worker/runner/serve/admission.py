"""Whether a runner takes a generate request, and on what terms. Pure: the runner's I/O shell passes the
request, the prompt's tokens (or why they could not be built), how many requests it holds, and a fresh random
seed; it gets the admitted request (with every sampling value fixed) or the rejection to send back."""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from shared.generation import GenerateRejected, GenerateRequest, SamplingParams, Speculation

from services.worker.runner.serve.speculative import MAX_TOKENS as MAX_DRAFT_TOKENS

BUSY_RETRY_AFTER_S = 1.0
MAX_TOP_LOGPROBS = 20  # OpenAI's limit


class Limits(msgspec.Struct, frozen=True):
    context_length: int  # tokens of prompt plus completion
    max_admitted: int  # requests running or waiting, beyond which the runner answers busy
    vocab_size: int | None = None  # token ids at or past it are not the model's (logit_bias)


class Admitted(msgspec.Struct, frozen=True):
    request: GenerateRequest
    prompt: list[int]
    sampling: SamplingParams  # max_tokens and seed fixed: every rank runs exactly this


def admit(
    request: GenerateRequest,
    held: int,
    limits: Limits,
    tokenize: Callable[[GenerateRequest], list[int]],
    fresh_seed: int,
    check_grammar: Callable[[str], str | None] | None = None,
) -> Admitted | GenerateRejected:
    """The only place a request's seed is fixed: the ranks of an instance all sample with the seed decided here
    (`fresh_seed` when the client gave none and the request samples), and the finished request records it.
    `check_grammar` says why a request's JSON schema cannot be compiled (None: it can); without one, a request
    with a schema is refused rather than run unconstrained."""
    rid = request.request_id
    if held >= limits.max_admitted:
        return GenerateRejected(rid, "busy", f"{held} requests are queued or running", BUSY_RETRY_AFTER_S)
    if (bad := _invalid_sampling(request.sampling, limits.vocab_size) or _invalid_speculation(request.speculative)) is not None:
        return GenerateRejected(rid, "invalid_request", bad[1], param=bad[0])
    if request.json_schema is not None:
        why = "this runner has no grammar support" if check_grammar is None else check_grammar(request.json_schema)
        if why is not None:
            return GenerateRejected(rid, "invalid_request", f"the schema cannot be compiled: {why}", param="json_schema")
    try:
        prompt = tokenize(request)
    except Exception as exc:  # noqa: BLE001 - e.g. a chat template that rejects the roles given
        return GenerateRejected(rid, "invalid_request", f"cannot build the prompt: {exc}")
    if not prompt:
        field = _prompt_field(request)
        return GenerateRejected(rid, "invalid_request", f"the {field} is empty: nothing to complete", param=field)
    room = limits.context_length - len(prompt)
    wanted = request.sampling.max_tokens
    if room < 1 or (wanted is not None and wanted > room):
        return GenerateRejected(
            rid,
            "context_length_exceeded",
            f"this model's context is {limits.context_length} tokens; the prompt has {len(prompt)} "
            f"and max_tokens asks for {wanted if wanted is not None else 'at least 1'} more",
            param="max_tokens" if wanted is not None and room >= 1 else _prompt_field(request),
        )
    sampling = request.sampling
    seed = sampling.seed if sampling.seed is not None or sampling.temperature <= 0 else fresh_seed
    return Admitted(request, prompt, msgspec.structs.replace(sampling, max_tokens=wanted or room, seed=seed))


def _invalid_sampling(sampling: SamplingParams, vocab_size: int | None = None) -> tuple[str, str] | None:
    """(the field, why) for sampling values no runner can honour; the gateway checks them too, but the runner's
    contract must not depend on who calls it."""
    if sampling.max_tokens is not None and sampling.max_tokens < 1:
        return "max_tokens", "max_tokens must be at least 1"
    if sampling.temperature < 0:
        return "temperature", "temperature must not be negative"
    if not 0.0 < sampling.top_p <= 1.0:
        return "top_p", "top_p must be in (0, 1]"
    if sampling.top_k < 0:
        return "top_k", "top_k must not be negative"
    if not 0.0 <= sampling.min_p <= 1.0:
        return "min_p", "min_p must be in [0, 1]"
    if sampling.repetition_penalty <= 0:
        return "repetition_penalty", "repetition_penalty must be positive"
    if not 0 <= sampling.top_logprobs <= MAX_TOP_LOGPROBS:
        return "top_logprobs", f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}"
    if sampling.choice < 0:
        return "n", "the choice index must not be negative"
    for token, _bias in sampling.logit_bias:
        if token < 0 or (vocab_size is not None and token >= vocab_size):
            return "logit_bias", f"logit_bias names token {token}, which is not in the model's vocabulary"
    return None


def _invalid_speculation(speculation: Speculation | None) -> tuple[str, str] | None:
    if speculation is not None and not 1 <= speculation.tokens <= MAX_DRAFT_TOKENS:
        return "speculative.tokens", f"speculative.tokens must be between 1 and {MAX_DRAFT_TOKENS}"
    return None


def _prompt_field(request: GenerateRequest) -> str:
    return "messages" if request.messages is not None else "prompt"
