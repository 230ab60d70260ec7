"""The draft side's per-request KV cache (runner/serve/drafting.py), in-process on the real model, asked by the main
side's ModelDraft without the bus (the bus is in test_speculative.py): a context that rejected drafts gets what a
fresh cache of the same context gets (the cache was trimmed to the common prefix), a lost key is sent again from
what the draft holds, `done` drops it, and a token outside the vocabulary is refused."""

from __future__ import annotations

import time

import pytest

from services.worker.runner.serve.drafting import Drafter
from services.worker.runner.serve.model_draft import ModelDraft
from shared.generation import DraftProposal, ProposeDraft
from tests.shared_models import SharedModels

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def parts(shared_models: SharedModels):
    from mlx_lm import load

    return load(str(shared_models.path("f32")))


def test_the_drafts_cache_follows_the_context_and_a_lost_key_is_sent_again(parts) -> None:
    model, tokenizer = parts
    drafter = Drafter(model, tokenizer.vocab_size)
    calls: list[ProposeDraft] = []

    def ask(request: ProposeDraft, timeout: float) -> DraftProposal:
        calls.append(request)
        return drafter.propose(request, time.monotonic())

    def tell(request: ProposeDraft) -> None:
        ask(request, 0.0)

    prompt = list(tokenizer.apply_chat_template([{"role": "user", "content": "Count to twenty."}],
                                                add_generation_prompt=True, tokenize=True))  # fmt: skip
    assert len(prompt) > 10
    draft = ModelDraft("r", prompt, ask, tell)
    first = draft.propose(4)
    assert len(first) == 4 and calls[-1].start == 0 and len(calls[-1].tokens) == len(prompt)
    # The main model keeps two drafts and picks another token than the third: the context diverges there.
    other = (first[2] + 1) % tokenizer.vocab_size
    draft.extend([*first[:2], other])
    after = draft.propose(4)
    assert calls[-1].start == len(prompt) and calls[-1].tokens == [*first[:2], other]  # only the delta crossed
    fresh = Drafter(model, tokenizer.vocab_size).propose(ProposeDraft("x", 0, draft.tokens, 4), time.monotonic())
    assert after == fresh.tokens

    drafter.keys.clear()  # lost (idle, or a restarted runner): answered with what it holds, then sent again
    draft.extend(after[:1])
    again = draft.propose(4)
    assert [c.start for c in calls[-2:]] == [len(draft.tokens) - 1, 0] and len(again) == 4
    draft.close()
    assert "r" not in drafter.keys
    with pytest.raises(ValueError, match="vocabulary"):
        drafter.propose(ProposeDraft("y", 0, [tokenizer.vocab_size], 1), time.monotonic())
