"""The model side of a runner: continuous batching over mlx-lm's BatchGenerator, a prefix cache of recent
prompts' KV caches, per-request sampling, stop strings and streaming detokenization."""

from __future__ import annotations

import json
from collections.abc import Callable

import mlx.core as mx
import msgspec
import numpy as np
import psutil
import structlog
from mlx_lm.generate import BatchGenerator, generation_stream
from mlx_lm.models.cache import LRUPromptCache, make_prompt_cache, trim_prompt_cache

from shared.generation import ChatMessage, GenerateRequest, SamplingParams, Speculation, TokenLogprob

from services.worker.runner.serve.control import Control
from services.worker.runner.serve import logsumexp
from services.worker.runner.serve.grammar import Grammars, constrained
from services.worker.runner.serve.model_draft import ModelDraft
from services.worker.runner.serve.sampling import processors_of, sampler_of, token_logprob
from services.worker.runner.serve.speculating import PREFILL_STEP, Speculating, text_of
from services.worker.runner.serve.stops import StopMatcher

MAX_BATCH = 8
PREFIX_CACHE_ENTRIES = 32
PREFIX_CACHE_ENTRIES_SHARDED = 8
PREFIX_CACHE_MEMORY_SHARE = 0.05  # of available memory at load
MODEL_KEY = "model"
# A request alone whose prompt has at most this many tokens the prefix cache lacks runs them in one forward pass;
# more go in two (Engine._first_token). Measured on SmolLM2-135M q4 with the CPU kernel, ms to the first token:
# 2 tokens 26 one pass / 35 two; 16 tokens 93 / 93; 43 tokens 238 / 206 (in one process, with the runner's MKL).
ONE_PASS_MAX_TOKENS = 12

log = structlog.get_logger()


class Step(msgspec.Struct, frozen=True):
    request_id: str
    text: str
    completion_tokens: int
    finish_reason: str | None  # "stop" | "length" | "cancelled" | "error" | None
    error: str | None = None  # why this request failed (finish_reason "error"); the batch goes on without it
    stop_sequence: str | None = None  # the stop string that ended the request, when one did
    logprobs: list[TokenLogprob] | None = None  # the step's token's, when the request asked for them
    drafted: int = 0  # speculative decoding so far: tokens drafted, and of those kept
    accepted: int = 0


class FirstToken(msgspec.Struct):
    """A request's first token, computed by the engine itself (Engine._first_token), in the shape of the batch's
    GenerationBatch.Response that _advance reads."""

    uid: int  # its uid in the batch, or -1 when the first token ended it
    token: int
    logprobs: mx.array
    finish_reason: str | None
    prompt_cache: list | None  # the cache and the tokens it holds, when the request ended
    all_tokens: list[int] | None


class Active:
    """One request in the batch: its detokenizer, stop strings and counts."""

    def __init__(self, request_id: str, detokenizer, stops: tuple[str, ...], top_logprobs: int | None = None) -> None:  # noqa: ANN001
        self.request_id = request_id
        self.detokenizer = detokenizer
        self.stops = StopMatcher(stops)
        self.tokens = 0
        self.top_logprobs = top_logprobs  # None: no logprobs asked for


class Engine:
    """Every rank of an instance runs one, fed the same submits and cancels in the same steps, so their
    batches, caches and sampled tokens stay identical (seeds are fixed by rank 0 before the broadcast)."""

    def __init__(self, model, tokenizer, max_batch: int = MAX_BATCH, world_size: int = 1) -> None:  # noqa: ANN001
        self.model, self.tokenizer = model, tokenizer
        self.max_batch = max_batch
        logsumexp.install()  # on a CPU: the batch's per-step logsumexp through our kernel (logsumexp.py)
        self.generator = BatchGenerator(
            self.model,
            stop_tokens=[[t] for t in sorted(self.tokenizer.eos_token_ids)],
            completion_batch_size=max_batch,
            prefill_batch_size=max_batch,
            prefill_step_size=PREFILL_STEP,
        )
        if world_size == 1:
            budget = int(psutil.virtual_memory().available * PREFIX_CACHE_MEMORY_SHARE)
            self.prefix_cache = LRUPromptCache(max_size=PREFIX_CACHE_ENTRIES, max_bytes=budget)
        else:
            # Ranks hold different layers, so byte sizes (and free memory) differ between them; evicting by
            # count alone keeps every rank's cache decisions identical.
            self.prefix_cache = LRUPromptCache(max_size=PREFIX_CACHE_ENTRIES_SHARDED)
        self.grammars = Grammars(getattr(tokenizer, "_tokenizer", tokenizer), sorted(tokenizer.eos_token_ids))
        self.active: dict[int, Active] = {}
        self.uids: dict[str, int] = {}
        # Requests whose sampler raised in the step in progress. The sampler draws the token after the one the step
        # returns (mlx-lm computes a step ahead), so that token is still theirs; they fail after it.
        self._faults: dict[str, Exception] = {}
        self._bytes: dict[int, bytes] = {}  # token id -> its bytes, for logprobs
        self.vocab_size: int | None = getattr(tokenizer, "vocab_size", None)
        # The request decoding with speculation beside the batch (at most one, and only while the batch is empty).
        self.speculating: tuple[Active, Speculating, SamplingParams] | None = None
        # A draft model's proposer for a request (request id, its speculation, its prompt); set by rank 0's server
        # (which asks the draft instance) and, on a split instance, on the other ranks (rank 0's drafts reach them).
        self.model_drafts: Callable[[str, Speculation, list[int]], ModelDraft] | None = None
        # First tokens computed at submit (a request alone: Engine._first_token), for the next step to return.
        self._firsts: list[Step] = []

    @property
    def busy(self) -> bool:
        return bool(self.active) or self.speculating is not None or bool(self._firsts)

    def prompt_tokens(self, request: GenerateRequest) -> list[int]:
        if request.messages is not None:
            messages = [template_message(m) for m in request.messages]
            tools = json.loads(request.tools) if request.tools else None
            return list(self.tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=True))
        return list(self.tokenizer.encode(request.prompt or ""))

    def submit(
        self, request_id: str, prompt: list[int], sampling: SamplingParams, json_schema: str | None = None,
        speculation: Speculation | None = None, alone: bool = True,
    ) -> int:  # fmt: skip
        """Queue a request; it joins the running batch at the next step (or, asking for speculation while
        nothing else runs, decodes beside it). Returns the prompt tokens reused from the prefix cache."""
        assert sampling.max_tokens is not None
        cache, rest = self.prefix_cache.fetch_nearest_cache(MODEL_KEY, prompt)
        if cache is not None and not rest:  # an exact hit: the last prompt token is fed again for its logits
            trim_prompt_cache(cache, 1)
            rest = prompt[-1:]
        cached = len(prompt) - len(rest)
        if speculation is not None:
            why = _no_speculation(json_schema, sampling, alone and not self.busy)
            model_draft = speculation.draft != "ngram"
            if why is None and model_draft and (speculation.draft_instance is None or self.model_drafts is None):
                why = "a draft model needs the draft instance the gateway resolved"
            if why is None:
                stops = frozenset(self.tokenizer.eos_token_ids)
                draft = None
                if model_draft:
                    assert self.model_drafts is not None
                    draft = self.model_drafts(request_id, speculation, prompt)
                spec = Speculating(self.model, prompt, sampling, speculation, cache, rest, stops, draft)
                self.speculating = (Active(request_id, self.tokenizer.detokenizer, sampling.stop), spec, sampling)
                return cached
            log.info("speculation steps aside", request=request_id, reason=why)
        if alone and not self.busy and 0 < len(rest) <= PREFILL_STEP:
            self._firsts.append(self._first_token(request_id, prompt, rest, sampling, json_schema, cache))
        else:
            self._insert(request_id, rest, sampling, json_schema, cache, prompt[:cached])
        return cached

    def _first_token(
        self, request_id: str, prompt: list[int], rest: list[int], sampling: SamplingParams, json_schema: str | None,
        cache: list | None,
    ) -> Step:  # fmt: skip
        """A request alone: its prompt (what the prefix cache lacks) goes through the model now, and the first
        token goes out at once; the batch then goes on from that token. The batch itself would take three steps
        to its first token (the prefill, the prompt's last token, then the step that returns the token drawn
        from it), each a cycle of the runner: the time to first token of a request alone.

        A short rest goes in one pass, whose logits are computed for every position (the last one's are used). A
        longer one goes as in the batch: all but the last token in a pass whose logits are never computed (the
        head is the largest matrix of a small model), then the last token alone, built while the first runs."""
        assert sampling.max_tokens is not None
        if cache is None:
            cache = make_prompt_cache(self.model)
        sampler = self._request_sampler(request_id, sampling, json_schema)
        processors = processors_of(sampling)
        with mx.stream(generation_stream):
            if len(rest) > ONE_PASS_MAX_TOKENS:
                self.model(mx.array([rest[:-1]]), cache=cache)
                mx.async_eval([c.state for c in cache])
                rest = rest[-1:]
            logits = self.model(mx.array([rest]), cache=cache)[:, -1, :]
            context = mx.array(prompt, dtype=mx.int32)  # what the batch's processors see: the tokens so far
            for processor in processors:
                logits = processor(context, logits)
            logprobs = logits - logsumexp.logsumexp(logits, axis=-1, keepdims=True)
            drawn = sampler(logprobs)
            mx.eval(drawn, logprobs)
        if (fault := self._faults.pop(request_id, None)) is not None:
            return Step(request_id, "", 0, "error", _reason(fault))
        token = int(drawn.item())  # type: ignore[arg-type]
        finish = "stop" if token in self.tokenizer.eos_token_ids else "length" if sampling.max_tokens <= 1 else None
        uid = -1
        if finish is None:
            (uid,) = self.generator.insert(
                [[token]], max_tokens=[sampling.max_tokens - 1], caches=[cache], all_tokens=[list(prompt)],
                samplers=[sampler], logits_processors=[processors],
            )  # fmt: skip
            self.uids[request_id] = uid
        top = sampling.top_logprobs if sampling.logprobs else None
        active = self.active[uid] = Active(request_id, self.tokenizer.detokenizer, sampling.stop, top)
        ended = finish is not None
        first = FirstToken(uid, token, logprobs[0], finish, cache if ended else None, list(prompt) if ended else None)
        try:
            return self._advance(active, first)
        except Exception as exc:  # noqa: BLE001 - its text or stops broke: it alone fails, and leaves the batch
            self.active.pop(uid, None)
            if self.uids.pop(request_id, None) is not None:
                self.generator.remove([uid])
            return Step(request_id, "", 1, "error", _reason(exc))

    def _insert(
        self, request_id: str, rest: list[int], sampling: SamplingParams, json_schema: str | None,
        cache: list | None, done: list[int], first_step: int = 0, active: Active | None = None,
    ) -> None:  # fmt: skip
        assert sampling.max_tokens is not None
        sampler = self._request_sampler(request_id, sampling, json_schema, first_step)
        (uid,) = self.generator.insert(
            [rest],
            max_tokens=[sampling.max_tokens - first_step],
            caches=[cache] if cache is not None else None,
            all_tokens=[done],
            samplers=[sampler],
            logits_processors=[processors_of(sampling)],
        )
        top = sampling.top_logprobs if sampling.logprobs else None
        self.active[uid] = active or Active(request_id, self.tokenizer.detokenizer, sampling.stop, top)
        self.uids[request_id] = uid

    def _request_sampler(
        self, request_id: str, sampling: SamplingParams, json_schema: str | None, first_step: int = 0
    ) -> Callable[[mx.array], mx.array]:
        sampler = self._sampler(sampling, first_step)
        if json_schema is not None:  # compiled here, on every rank, before the request joins the batch
            sampler = constrained(sampler, self.grammars.matcher(json_schema), self.grammars.eos_token)
        return self._guarded(request_id, sampler)

    def _sampler(self, sampling: SamplingParams, first_step: int = 0) -> Callable[[mx.array], mx.array]:
        return sampler_of(sampling, first_step)

    def _guarded(self, request_id: str, sampler: Callable[[mx.array], mx.array]) -> Callable[[mx.array], mx.array]:
        """The batch calls every request's sampler inside one step: one that raises would end the step for all.
        Its fault is noted instead (the request fails after the step) and a greedy token keeps the batch's shape."""

        def sample(logprobs: mx.array) -> mx.array:
            try:
                return sampler(logprobs)
            except Exception as exc:  # noqa: BLE001 - fails this request only, after the step
                self._faults.setdefault(request_id, exc)
                return mx.argmax(logprobs, axis=-1)

        return sample

    def cancel(self, request_id: str) -> Step | None:
        if self.speculating is not None and self.speculating[0].request_id == request_id:
            active = self.speculating[0]
            self.speculating[1].close()
            self.speculating = None
            return Step(request_id, "", active.tokens, "cancelled")
        self._firsts = [f for f in self._firsts if f.request_id != request_id]
        uid = self.uids.pop(request_id, None)
        if uid is None:
            return None
        active = self.active.pop(uid)
        self.generator.remove([uid])
        return Step(request_id, "", active.tokens, "cancelled")

    def step(self) -> list[Step]:
        """One decode step for the whole batch (and a slice of prefill for newcomers)."""
        if self._firsts:  # first tokens made at submit go out before the batch steps again (it holds only them)
            firsts, self._firsts = self._firsts, []
            return firsts
        if self.speculating is not None:
            return self._speculative_step()
        _prompt_progress, responses = self.generator.next()
        steps = []
        for response in responses:
            active = self.active.get(response.uid)
            if active is None:
                continue
            try:
                steps.append(self._advance(active, response))
            except Exception as exc:  # noqa: BLE001 - this request's text or stops broke: it alone fails
                self._faults.setdefault(active.request_id, exc)
        faults, self._faults = self._faults, {}
        return steps + [self._fail(rid, exc) for rid, exc in faults.items() if rid in self.uids]

    def run_cycle(self, control: Control) -> tuple[list[Step], dict[str, int]]:
        """Cancels, then newcomers, then one step if anything runs: the same on every rank.
        Returns the steps and, per submitted request, the prompt tokens reused from the prefix cache."""
        steps = [step for rid in control.cancels if (step := self.cancel(rid)) is not None]
        # Cancelled before it ever joined (the cancel came in the same control): it still ends, as cancelled,
        # so the runner forgets it instead of holding its queue place for ever.
        steps += [Step(s.request_id, "", 0, "cancelled") for s in control.submits if s.request_id in control.cancels]
        cached = {}
        submits = [s for s in control.submits if s.request_id not in control.cancels]
        for s in submits:
            try:
                cached[s.request_id] = self.submit(
                    s.request_id, s.prompt, s.sampling, s.json_schema, s.speculative, alone=len(submits) == 1
                )
            except Exception as exc:  # noqa: BLE001 - a request the generator refuses fails alone
                steps.append(Step(s.request_id, "", 0, "error", _reason(exc)))
        if self.speculating is not None and self.active:
            self.step_aside("other requests joined the batch")
        if self.busy:
            steps += self.step()
        return steps, cached

    def _fail(self, request_id: str, exc: Exception) -> Step:
        """Take a request out of the batch for an error of its own; the others go on."""
        uid = self.uids.pop(request_id)
        active = self.active.pop(uid)
        self.generator.remove([uid])
        return Step(request_id, "", active.tokens, "error", _reason(exc))

    def _advance(self, active: Active, response) -> Step:  # noqa: ANN001 - GenerationBatch.Response
        active.tokens += 1
        finish = response.finish_reason
        if finish == "stop":  # an end-of-sequence token: not part of the text
            active.detokenizer.finalize()
        else:
            active.detokenizer.add_token(response.token)
            if finish is not None:
                active.detokenizer.finalize()
        text, hit_stop = active.stops.feed(active.detokenizer.last_segment)
        if hit_stop and finish is None:
            finish = "stop"
            caches = self.generator.remove([response.uid], return_prompt_caches=True)
            cache, tokens = caches.get(response.uid, (None, None))
            self._remember(tokens, cache)
        elif finish is not None:
            text += active.stops.flush()
            self._remember(response.all_tokens, response.prompt_cache)
        if finish is not None:
            self.active.pop(response.uid, None)
            self.uids.pop(active.request_id, None)
        logprobs = None if active.top_logprobs is None else [self._logprob(response, active.top_logprobs)]
        return Step(active.request_id, text, active.tokens, finish, stop_sequence=active.stops.hit if finish else None,
                    logprobs=logprobs)  # fmt: skip

    def _logprob(self, response, top: int) -> TokenLogprob:  # noqa: ANN001 - GenerationBatch.Response
        """Read from the step's logprobs, which the batch has already evaluated."""
        values = np.array(response.logprobs.astype(mx.float32))
        return token_logprob(values, response.token, top, self._token_bytes)

    def _token_bytes(self, token: int) -> bytes:
        if (known := self._bytes.get(token)) is None:
            lltok = self.grammars.tokenizer
            special = lltok.is_special_token(token)
            known = self.tokenizer.decode([token]).encode() if special else lltok.decode_bytes([token])
            self._bytes[token] = known
        return known

    def _remember(self, tokens: list[int] | None, cache: list | None) -> None:
        if tokens and cache:
            self.prefix_cache.insert_cache(MODEL_KEY, list(tokens), cache)


    def _speculative_step(self) -> list[Step]:
        assert self.speculating is not None
        active, spec, sampling = self.speculating
        try:
            tokens, finish = spec.step()
            text, finish, kept = text_of(active, tokens, finish)
        except Exception as exc:  # noqa: BLE001 - this request alone fails
            self.speculating = None
            spec.close()
            return [Step(active.request_id, "", active.tokens, "error", _reason(exc))]
        if finish is not None:
            self.speculating = None
            spec.close()
            if isinstance(spec.draft, ModelDraft):
                log.info("speculation ended", request=active.request_id, drafted=spec.pace.drafted,
                         accepted=spec.pace.accepted, propose_calls=spec.draft.calls, propose_ms=spec.draft.mean_ms)  # fmt: skip
            self._remember(*spec.ended(len(spec.completion) - len(tokens) + kept))
        elif not spec.pace.on:
            self.step_aside(spec.pace.off_reason or "")
        if not tokens and finish is None:
            return []
        stop = active.stops.hit if finish else None
        return [Step(active.request_id, text, active.tokens, finish, stop_sequence=stop, drafted=spec.pace.drafted,
                     accepted=spec.pace.accepted)]

    def step_aside(self, why: str) -> None:
        """The speculating request goes on in the batch, as plain decoding, from where it is."""
        assert self.speculating is not None
        active, spec, sampling = self.speculating
        self.speculating = None
        spec.close()
        rest, cache, done, made = spec.handover()
        calls = spec.draft.calls if isinstance(spec.draft, ModelDraft) else None
        mean_ms = spec.draft.mean_ms if isinstance(spec.draft, ModelDraft) else None
        log.info("speculation steps aside", request=active.request_id, reason=why, tokens=made,
                 drafted=spec.pace.drafted, accepted=spec.pace.accepted, propose_calls=calls, propose_ms=mean_ms)  # fmt: skip
        self._insert(active.request_id, rest, sampling, None, cache, done, made, active)


def template_message(m: ChatMessage) -> dict:
    """A message as chat templates read it: role and content, and an assistant's calls or a tool's call id."""
    out: dict = {"role": m.role, "content": m.content}
    if m.tool_calls:
        out["tool_calls"] = json.loads(m.tool_calls)
    if m.tool_call_id:
        out["tool_call_id"] = m.tool_call_id
    return out


def _no_speculation(json_schema: str | None, sampling: SamplingParams, alone: bool) -> str | None:
    """Why a request that asks for speculation decodes in the batch instead (None: it speculates)."""
    if json_schema is not None:
        return "a grammar constrains the output"
    if sampling.logprobs:
        return "logprobs were asked for"
    if processors_of(sampling):  # the verification step applies no penalties nor logit bias
        return "penalties or a logit bias shape the logits"
    if not alone:
        return "the batch is busy with other requests"
    return None


def _reason(exc: Exception) -> str:
    return f"generation failed: {type(exc).__name__}: {exc}"
