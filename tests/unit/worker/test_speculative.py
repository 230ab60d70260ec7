"""Prompt-lookup speculation's pure part: the n-gram draft, the acceptance rule, the cut at a finish, the pace."""

from __future__ import annotations

from services.worker.runner.serve.speculative import (
    MAX_MISSES,
    WARMUP_DRAFTS,
    NgramDraft,
    Pace,
    accept,
    finish_of,
)


def test_the_draft_is_what_followed_the_latest_earlier_occurrence_of_the_suffix() -> None:
    draft = NgramDraft([1, 2, 3, 4, 5, 9, 2, 3, 7, 8, 1, 2, 3])
    # [2, 3] last occurred before the suffix at 6..7, followed by 7, 8; the longer [1, 2, 3] at 0..2 wins.
    assert draft.propose(3) == [4, 5, 9]
    draft.extend([6])
    assert draft.propose(3) == []  # [3, 6] and [2, 3, 6] never occurred
    assert draft.propose(0) == []


def test_the_suffix_does_not_find_itself_and_the_index_follows_new_tokens() -> None:
    draft = NgramDraft([5, 6])
    assert draft.propose(4) == []
    draft.extend([7, 5, 6])
    assert draft.propose(4) == [7, 5, 6]  # a repeating text proposes its own continuation
    draft.extend([7])
    assert draft.propose(2) == [5, 6]


def test_one_token_suffixes_propose_nothing_by_default() -> None:
    assert NgramDraft([4, 8, 9, 4]).propose(2) == []
    assert NgramDraft([4, 8, 9, 4], min_ngram=1).propose(2) == [8, 9]


def test_acceptance_keeps_the_agreeing_prefix_and_the_models_own_token() -> None:
    assert accept([1, 2, 3], [1, 2, 3, 4]) == [1, 2, 3, 4]  # all kept, plus the token after them
    assert accept([1, 2, 3], [1, 5, 3, 4]) == [1, 5]  # the model's pick replaces the first wrong draft
    assert accept([1, 2], [9, 2, 3]) == [9]
    assert accept([], [7]) == [7]  # no draft: plain decoding


def test_a_step_is_cut_at_end_of_sequence_and_at_max_tokens() -> None:
    eos = frozenset({0})
    assert finish_of([4, 0, 5], eos, 10) == ([4, 0], "stop")
    assert finish_of([4, 5, 6], eos, 2) == ([4, 5], "length")
    assert finish_of([4, 5], eos, 2) == ([4, 5], "length")
    assert finish_of([4, 5], eos, 3) == ([4, 5], None)


def test_the_pace_grows_on_full_acceptance_and_shrinks_to_what_was_kept() -> None:
    pace = Pace(limit=6)
    assert pace.k == 6
    pace.record(6, 1)
    assert pace.k == 2
    pace.record(2, 2)
    assert pace.k == 3
    for _ in range(5):
        pace.record(pace.k, pace.k)
    assert pace.k == 6 and pace.on


def test_speculation_turns_off_when_it_does_not_pay() -> None:
    low = Pace(limit=4)
    while low.drafted < WARMUP_DRAFTS:
        assert low.on
        low.record(4, 0)
    assert not low.on and "acceptance" in (low.off_reason or "")
    dry = Pace(limit=4)
    for _ in range(MAX_MISSES - 1):
        dry.record(0, 0)
    assert dry.on
    dry.record(4, 4)  # a draft found resets the run of misses
    for _ in range(MAX_MISSES):
        dry.record(0, 0)
    assert not dry.on and "no draft" in (dry.off_reason or "")
