"""The draft side of draft-model speculation: a runner proposes greedy tokens for another instance's speculating
request (the `propose` endpoint, server.py). Each request (its key) keeps a KV cache of its own here, apart from
the batch's: a call trims it to the prefix it shares with the context it is sent (the main model rejected some
drafts), feeds the rest and then its k greedy tokens one at a time. The server runs every call on the runner's
MLX thread, between two steps of the batch, so normal requests are never disturbed: they wait one call at most.

A key is dropped on its request's `done` message, after IDLE_S without a call, or, the oldest first, past
MAX_KEYS. A call that starts past what is kept (the key was dropped, the runner restarted) is answered with how
much is known, and the caller sends the context again from there."""

from __future__ import annotations

from collections.abc import Sequence

import mlx.core as mx
from mlx_lm.generate import generation_stream
from mlx_lm.models.cache import make_prompt_cache, trim_prompt_cache

from shared.generation import DraftProposal, ProposeDraft

from services.worker.runner.serve.speculating import PREFILL_STEP
from services.worker.runner.serve.speculative import MAX_TOKENS

MAX_KEYS = 8  # requests drafted for at once (a main runner speculates one request at a time)
IDLE_S = 60.0


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class Drafted:
    """One key's state: the context it was sent, and the tokens its KV cache holds (the context's prefix and the
    drafts it fed itself, which the next context may or may not share)."""

    def __init__(self, model, now: float) -> None:  # noqa: ANN001
        self.context: list[int] = []
        self.fed: list[int] = []
        self.cache = make_prompt_cache(model)
        self.used = now


class Drafter:
    def __init__(self, model, vocab_size: int | None) -> None:  # noqa: ANN001
        self.model, self.vocab_size = model, vocab_size
        self.keys: dict[str, Drafted] = {}

    def propose(self, ask: ProposeDraft, now: float) -> DraftProposal:
        """Raises ValueError for a request it cannot serve (k, or a token outside the vocabulary)."""
        self._evict(now)
        if ask.done:
            self.keys.pop(ask.key, None)
            return DraftProposal([], 0)
        if not 0 <= ask.k <= MAX_TOKENS:
            raise ValueError(f"k must be between 0 and {MAX_TOKENS}")
        if self.vocab_size is not None and any(not 0 <= t < self.vocab_size for t in ask.tokens):
            raise ValueError(f"a token id outside the draft model's vocabulary ({self.vocab_size})")
        entry = self.keys.get(ask.key)
        known = len(entry.context) if entry is not None else 0
        if ask.start > known or (entry is None and ask.start > 0):
            return DraftProposal([], known)
        if entry is None:
            while len(self.keys) >= MAX_KEYS:  # the least recently used goes
                del self.keys[min(self.keys, key=lambda k: self.keys[k].used)]
            entry = self.keys[ask.key] = Drafted(self.model, now)
        entry.used = now
        entry.context = entry.context[: ask.start] + list(ask.tokens)
        if ask.k == 0 or not entry.context:
            return DraftProposal([], len(entry.context))
        return DraftProposal(self._greedy(entry, ask.k), len(entry.context))

    def _greedy(self, entry: Drafted, k: int) -> list[int]:
        keep = min(common_prefix(entry.fed, entry.context), len(entry.context) - 1)  # the last one gives logits
        trim_prompt_cache(entry.cache, len(entry.fed) - keep)
        entry.fed = entry.fed[:keep]
        feed = entry.context[keep:]
        out: list[int] = []
        with mx.stream(generation_stream):
            while len(feed) > PREFILL_STEP:
                self.model(mx.array([feed[:PREFILL_STEP]]), cache=entry.cache)
                mx.eval([c.state for c in entry.cache])
                entry.fed += feed[:PREFILL_STEP]
                feed = feed[PREFILL_STEP:]
            for _ in range(k):
                logits = self.model(mx.array([feed]), cache=entry.cache)[0, -1, :]
                token = int(mx.argmax(logits).item())  # type: ignore[arg-type]
                entry.fed += feed
                out.append(token)
                feed = [token]
        return out

    def _evict(self, now: float) -> None:
        for key in [k for k, e in self.keys.items() if now - e.used > IDLE_S]:
            del self.keys[key]
