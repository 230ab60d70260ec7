"""The model side of a runner: continuous batching over mlx-lm's BatchGenerator, a prefix cache of recent
prompts' KV caches, per-request sampling, stop strings and streaming detokenization."""

from __future__ import annotations

import msgspec
import psutil
from mlx_lm.generate import BatchGenerator
from mlx_lm.models.cache import LRUPromptCache

from shared.generation import GenerateRequest, SamplingParams

from services.worker.runner.serve.control import Control
from services.worker.runner.serve.sampling import make_seeded_sampler
from services.worker.runner.serve.stops import StopMatcher

MAX_BATCH = 8
PREFILL_STEP = 512
PREFIX_CACHE_ENTRIES = 32
PREFIX_CACHE_ENTRIES_SHARDED = 8
PREFIX_CACHE_MEMORY_SHARE = 0.05  # of available memory at load
MODEL_KEY = "model"


class Step(msgspec.Struct, frozen=True):
    request_id: str
    text: str
    completion_tokens: int
    finish_reason: str | None  # "stop" | "length" | "cancelled" | None


class Active:
    """One request in the batch: its detokenizer, stop strings and counts."""

    def __init__(self, request_id: str, detokenizer, stops: tuple[str, ...]) -> None:  # noqa: ANN001
        self.request_id = request_id
        self.detokenizer = detokenizer
        self.stops = StopMatcher(stops)
        self.tokens = 0


class Engine:
    """Every rank of an instance runs one, fed the same submits and cancels in the same steps, so their
    batches, caches and sampled tokens stay identical (seeds are fixed by rank 0 before the broadcast)."""

    def __init__(self, model, tokenizer, max_batch: int = MAX_BATCH, world_size: int = 1) -> None:  # noqa: ANN001
        self.model, self.tokenizer = model, tokenizer
        self.max_batch = max_batch
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
        self.active: dict[int, Active] = {}
        self.uids: dict[str, int] = {}

    @property
    def busy(self) -> bool:
        return bool(self.active)

    def prompt_tokens(self, request: GenerateRequest) -> list[int]:
        if request.messages is not None:
            messages = [{"role": m.role, "content": m.content} for m in request.messages]
            return list(self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True))
        return list(self.tokenizer.encode(request.prompt or ""))

    def submit(self, request_id: str, prompt: list[int], sampling: SamplingParams) -> int:
        """Queue a request; it joins the running batch at the next step. Returns the prompt tokens reused
        from the prefix cache."""
        assert sampling.max_tokens is not None
        cache, rest = self.prefix_cache.fetch_nearest_cache(MODEL_KEY, prompt)
        cached = len(prompt) - len(rest)
        sampler = make_seeded_sampler(sampling.temperature, sampling.top_p, sampling.seed)
        (uid,) = self.generator.insert(
            [rest],
            max_tokens=[sampling.max_tokens],
            caches=[cache] if cache is not None else None,
            all_tokens=[prompt[:cached]],
            samplers=[sampler],
        )
        self.active[uid] = Active(request_id, self.tokenizer.detokenizer, sampling.stop)
        self.uids[request_id] = uid
        return cached

    def cancel(self, request_id: str) -> Step | None:
        uid = self.uids.pop(request_id, None)
        if uid is None:
            return None
        active = self.active.pop(uid)
        self.generator.remove([uid])
        return Step(request_id, "", active.tokens, "cancelled")

    def step(self) -> list[Step]:
        """One decode step for the whole batch (and a slice of prefill for newcomers)."""
        _prompt_progress, responses = self.generator.next()
        steps = []
        for response in responses:
            active = self.active.get(response.uid)
            if active is not None:
                steps.append(self._advance(active, response))
        return steps

    def run_cycle(self, control: Control) -> tuple[list[Step], dict[str, int]]:
        """Cancels, then newcomers, then one step if anything runs: the same on every rank.
        Returns the steps and, per submitted request, the prompt tokens reused from the prefix cache."""
        steps = [step for rid in control.cancels if (step := self.cancel(rid)) is not None]
        # Cancelled before it ever joined (the cancel came in the same control): it still ends, as cancelled,
        # so the runner forgets it instead of holding its queue place for ever.
        steps += [Step(s.request_id, "", 0, "cancelled") for s in control.submits if s.request_id in control.cancels]
        cached = {
            s.request_id: self.submit(s.request_id, s.prompt, s.sampling)
            for s in control.submits
            if s.request_id not in control.cancels
        }
        if self.busy:
            steps += self.step()
        return steps, cached

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
        return Step(active.request_id, text, active.tokens, finish)

    def _remember(self, tokens: list[int] | None, cache: list | None) -> None:
        if tokens and cache:
            self.prefix_cache.insert_cache(MODEL_KEY, list(tokens), cache)
