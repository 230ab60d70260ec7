"""One request decoded with prompt-lookup speculation, beside mlx-lm's BatchGenerator: the request has the
model to itself (the engine starts one only when nothing else runs), its own KV cache, and each step verifies
the drafted tokens in one forward pass. When other requests arrive, or speculation stops paying, it hands its
cache over to the batch and goes on there as plain decoding (Engine.step_aside).

On a split instance every rank runs this same code on the same tokens: the forward pass of k + 1 tokens is one
step through the ranks (the pipeline's send/recv and the logits' all_gather are inside the model), every rank
gets the same logits, picks the same tokens and drafts the same next ones.
"""

from __future__ import annotations

import mlx.core as mx
from mlx_lm.generate import generation_stream
from mlx_lm.models.cache import make_prompt_cache, trim_prompt_cache

from shared.generation import SamplingParams, Speculation

from services.worker.runner.serve.logsumexp import logsumexp
from services.worker.runner.serve.model_draft import DraftUnavailable, ModelDraft
from services.worker.runner.serve.sampling import token_at
from services.worker.runner.serve.speculative import NgramDraft, Pace, accept, finish_of

PREFILL_STEP = 512  # the batch's prefill slice too (engine.py): a request that steps aside has the same cache


class Speculating:
    """The KV cache holds the prompt and every completion token but the last (`pending`, fed next step)."""

    def __init__(
        self, model, prompt: list[int], sampling: SamplingParams, speculation: Speculation,  # noqa: ANN001
        cache: list | None, rest: list[int], stop_tokens: frozenset[int], draft: ModelDraft | None = None,
    ) -> None:  # fmt: skip
        assert sampling.max_tokens is not None
        self.model, self.prompt, self.sampling = model, prompt, sampling
        if cache is None:
            cache = make_prompt_cache(model)
        elif not rest:  # an exact prefix hit: the last prompt token is fed again for its logits
            trim_prompt_cache(cache, 1)
            rest = prompt[-1:]
        self.cache, self.rest = cache, list(rest)
        self.stop_tokens = stop_tokens
        self.completion: list[int] = []
        self.draft: NgramDraft | ModelDraft = draft if draft is not None else NgramDraft(prompt)
        self.pace = Pace(limit=speculation.tokens)

    def step(self) -> tuple[list[int], str | None]:
        """One prefill slice (no token) or one verification: the tokens this step adds, and the finish reason."""
        if len(self.rest) > 1:  # the prompt but its last token, in the batch's slices: the same numerics
            n = min(PREFILL_STEP, len(self.rest) - 1)  # (a slice of <= 64 rows runs on the CPU kernel, others not)
            with mx.stream(generation_stream):
                self.model(mx.array([self.rest[:n]]), cache=self.cache)
                mx.eval([c.state for c in self.cache])
            self.rest = self.rest[n:]
            return [], None
        room = self.sampling.max_tokens - len(self.completion)  # type: ignore[operator]
        verifying = not self.rest
        unavailable = None
        if not verifying:  # the prompt's last token, alone as in the batch: it gives the first token
            fed, drafts, self.rest = self.rest, [], []
        else:
            try:
                drafts = self.draft.propose(min(self.pace.k, room - 1))
            except DraftUnavailable as exc:  # this step verifies no draft; the engine hands the request over
                unavailable, drafts = str(exc), []
            fed = [self.completion[-1], *drafts]
        picks = self._picks(fed, len(drafts) + 1)
        tokens = accept(drafts, picks)
        trim_prompt_cache(self.cache, len(drafts) - (len(tokens) - 1))  # the rejected drafts leave the cache
        if verifying:
            self.pace.record(len(drafts), len(tokens) - 1)
        if unavailable is not None:
            self.pace.off_reason = unavailable
        tokens, finish = finish_of(tokens, self.stop_tokens, room)
        self.completion += tokens
        self.draft.extend(tokens)
        return tokens, finish

    def _picks(self, fed: list[int], positions: int) -> list[int]:
        """The request's own sampler's token at each of the last `positions` positions of `fed`."""
        first = len(self.completion)
        s = self.sampling
        with mx.stream(generation_stream):
            logits = self.model(mx.array([fed]), cache=self.cache)[0, -positions:, :]
            logprobs = logits - logsumexp(logits, axis=-1, keepdims=True)
            picks = mx.concatenate(
                [token_at(logprobs[i : i + 1], s.temperature, s.top_p, s.seed, first + i, top_k=s.top_k, min_p=s.min_p,
                          choice=s.choice) for i in range(positions)]
            )
            return [int(t) for t in picks.tolist()]  # type: ignore[union-attr,arg-type]

    def close(self) -> None:
        """The request leaves speculation (it ended, was cancelled, or steps aside)."""
        if isinstance(self.draft, ModelDraft):
            self.draft.close()

    def ended(self, kept: int) -> tuple[list[int], list]:
        """The request ended after `kept` completion tokens: the tokens its cache holds and the cache, trimmed to
        them, for the prefix cache."""
        assert kept > 0
        tokens = self.prompt + self.completion[: kept - 1]
        trim_prompt_cache(self.cache, self.cache[0].offset - len(tokens))
        return tokens, self.cache

    def handover(self) -> tuple[list[int], list | None, list[int], int]:
        """What the batch needs to go on with this request: (tokens still to feed, the cache of the tokens
        before them (None: empty), those tokens, the completion tokens already made)."""
        if not self.completion:
            done = self.prompt[: len(self.prompt) - len(self.rest)]
            return self.rest, self.cache if done else None, done, 0
        return self.completion[-1:], self.cache, self.prompt + self.completion[:-1], len(self.completion)


def text_of(active, tokens: list[int], finish: str | None) -> tuple[str, str | None, int]:  # noqa: ANN001 - engine.Active
    """The text of a step's tokens through the request's detokenizer and stop strings, as the batch makes it one
    token at a time: (text, finish reason, tokens kept: a stop string ends the request at the token that
    completes it)."""
    parts = []
    for i, token in enumerate(tokens):
        last = i == len(tokens) - 1
        active.tokens += 1
        if last and finish == "stop":  # an end-of-sequence token: not part of the text
            active.detokenizer.finalize()
        else:
            active.detokenizer.add_token(token)
            if last and finish is not None:
                active.detokenizer.finalize()
        text, hit_stop = active.stops.feed(active.detokenizer.last_segment)
        parts.append(text)
        if hit_stop:
            return "".join(parts), "stop", i + 1
    if finish is not None:
        parts.append(active.stops.flush())
    return "".join(parts), finish, len(tokens)
