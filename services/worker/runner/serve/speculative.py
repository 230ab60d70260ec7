"""Prompt-lookup speculation, the pure part: the n-gram draft, the acceptance rule and the pace (how many tokens
to draft, and when speculation stops paying). No MLX: every rank of an instance decides from the same tokens,
so their decisions agree without a word between them.

The acceptance rule: the model verifies the k drafted tokens in one forward pass, giving k + 1 positions. At
each position the request's own sampler picks the model's token (argmax when greedy; seeded sampling keyed by
the completion position, sampling.py); drafts are kept while they equal the model's picks, then the model's
pick at the first disagreement (or after the last draft) is added. The draft is a point mass (one token, no
distribution), for which this is the standard speculative rejection rule: a draft d is kept with probability
p(d) = min(1, p(d)/q(d)), and a rejected position yields the model's pick conditioned on "not d", which is the
residual distribution norm(max(p - q, 0)). Because the pick at each position is the very token plain decoding
would sample there, the output equals plain decoding's, greedy or seeded.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

MAX_NGRAM = 3  # the longest suffix looked up in the text so far
MIN_NGRAM = 2  # shorter suffixes (one token) match almost anywhere and are rarely right
MAX_TOKENS = 16  # the most tokens one request may ask to draft per step
# Speculation pays when a verification keeps enough of its drafts. After WARMUP drafted tokens the request's
# acceptance rate must stay at or above MIN_ACCEPTANCE, and a run of MAX_MISSES steps that found no draft at all
# means the text does not repeat: either way the request goes back to plain decoding.
WARMUP_DRAFTS = 16
MIN_ACCEPTANCE = 0.3
MAX_MISSES = 4


class NgramDraft:
    """The text so far (prompt and completion), indexed by its n-grams: the most recent earlier occurrence of the
    current suffix proposes what followed it."""

    def __init__(self, tokens: Sequence[int], max_ngram: int = MAX_NGRAM, min_ngram: int = MIN_NGRAM) -> None:
        self.tokens: list[int] = []
        self.max_ngram, self.min_ngram = max_ngram, min_ngram
        self._after: dict[tuple[int, ...], int] = {}  # n-gram -> the position just after its latest occurrence
        self._indexed = 0  # n-grams ending before this position are in _after
        self.extend(tokens)

    def extend(self, tokens: Sequence[int]) -> None:
        self.tokens.extend(tokens)

    def _index(self) -> None:
        # Every n-gram that ends before the last token: the suffix itself must not find itself.
        for end in range(max(self._indexed, 1), len(self.tokens)):
            for n in range(self.min_ngram, self.max_ngram + 1):
                if end >= n:
                    self._after[tuple(self.tokens[end - n : end])] = end
        self._indexed = max(self._indexed, len(self.tokens))

    def propose(self, k: int) -> list[int]:
        """Up to k tokens that followed the longest suffix's latest earlier occurrence; [] when none recurs."""
        if k <= 0:
            return []
        self._index()
        for n in range(min(self.max_ngram, len(self.tokens)), self.min_ngram - 1, -1):
            after = self._after.get(tuple(self.tokens[-n:]))
            if after is not None:
                return self.tokens[after : after + k]
        return []


def accept(drafts: Sequence[int], picks: Sequence[int]) -> list[int]:
    """The tokens one verification yields: the drafts that agree with the model's picks, then its own pick.
    `picks` has one token per verified position (len(drafts) + 1)."""
    assert len(picks) == len(drafts) + 1
    kept = 0
    while kept < len(drafts) and drafts[kept] == picks[kept]:
        kept += 1
    return list(picks[: kept + 1])


def finish_of(tokens: Sequence[int], stop_tokens: frozenset[int], room: int) -> tuple[list[int], str | None]:
    """The tokens of a step that the request keeps, cut at its first end-of-sequence token or where its
    max_tokens runs out, and why it ends there ("stop", "length", or None when it goes on)."""
    for i, token in enumerate(tokens[:room]):
        if token in stop_tokens:
            return list(tokens[: i + 1]), "stop"
    if len(tokens) >= room:
        return list(tokens[:room]), "length"
    return list(tokens), None


class Pace(msgspec.Struct):
    """How many tokens to draft next, from what the verifications kept; and whether speculation still pays."""

    limit: int  # the request's k: the most drafted per step
    k: int = 0  # drafted next step (0 before the first: set from limit)
    drafted: int = 0
    accepted: int = 0
    misses: int = 0  # steps in a row that found no draft
    off_reason: str | None = None

    def __post_init__(self) -> None:
        self.k = self.k or self.limit

    @property
    def on(self) -> bool:
        return self.off_reason is None

    def record(self, drafted: int, accepted: int) -> None:
        if drafted == 0:
            self.misses += 1
            if self.misses >= MAX_MISSES:
                self.off_reason = f"no draft found in {self.misses} steps in a row"
            return
        self.misses = 0
        self.drafted += drafted
        self.accepted += accepted
        # Every draft kept: try one more next time; else draft just past what was kept.
        self.k = min(self.limit, self.k + 1) if accepted == drafted else max(1, accepted + 1)
        rate = self.accepted / self.drafted
        if self.drafted >= WARMUP_DRAFTS and rate < MIN_ACCEPTANCE:
            self.off_reason = f"acceptance {rate:.2f} under {MIN_ACCEPTANCE} after {self.drafted} drafted tokens"
