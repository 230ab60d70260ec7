"""Stop strings over streamed text: services/worker/runner/serve/stops.py."""

from __future__ import annotations

import random

import pytest

from services.worker.runner.serve.stops import StopMatcher


def run(stops: tuple[str, ...], chunks: list[str]) -> tuple[list[str], bool, str]:
    """Feed chunks until a stop; returns (emitted pieces, stopped, flushed rest)."""
    m = StopMatcher(stops)
    out = []
    for chunk in chunks:
        text, stopped = m.feed(chunk)
        out.append(text)
        if stopped:
            return out, True, m.flush()
    return out, False, m.flush()


def test_no_stops_passes_through():
    m = StopMatcher(())
    for chunk in ["Hel", "lo", " wor", "ld\n", ""]:
        assert m.feed(chunk) == (chunk, False)
    assert m.flush() == ""


def test_empty_stop_strings_are_ignored():
    m = StopMatcher(("", ""))
    assert m.feed("abc") == ("abc", False)
    assert m.stops == ()


def test_stop_in_one_chunk_cuts_before_it():
    m = StopMatcher(("END",))
    assert m.feed("hello END world") == ("hello ", True)


def test_stop_at_very_start():
    m = StopMatcher(("\n",))
    assert m.feed("\nmore") == ("", True)


def test_stop_split_across_chunks():
    out, stopped, rest = run(("STOP",), ["abc S", "T", "OP and more"])
    assert stopped
    assert "".join(out) == "abc "
    assert rest == ""


def test_stop_split_across_three_chunks_emits_nothing_of_it():
    m = StopMatcher(("<|end|>",))
    assert m.feed("Hi <|") == ("Hi ", False)
    assert m.feed("en") == ("", False)
    assert m.feed("d|> tail") == ("", True)


def test_partial_prefix_held_back_then_released():
    m = StopMatcher(("STOP",))
    assert m.feed("abc ST") == ("abc ", False)  # "ST" could still become "STOP"
    assert m.feed("ART") == ("START", False)  # "STA..." cannot become "STOP": released whole
    assert m.feed(" done") == (" done", False)
    assert m.flush() == ""


def test_partial_prefix_released_only_as_far_as_needed():
    m = StopMatcher(("abab",))
    # "aba" is a prefix of "abab": hold all of it
    assert m.feed("xaba") == ("x", False)
    # "abac": no suffix of it begins "abab": release all
    assert m.feed("c") == ("abac", False)


def test_overlapping_prefix_keeps_longest_candidate():
    m = StopMatcher(("aab",))
    assert m.feed("aa") == ("", False)
    assert m.feed("a") == ("a", False)  # "aaa": the last "aa" may still be "aab"
    assert m.feed("b!") == ("", True)


def test_flush_returns_held_back_text():
    m = StopMatcher(("STOP",))
    assert m.feed("the end ST") == ("the end ", False)
    assert m.flush() == "ST"
    assert m.flush() == ""


def test_flush_after_stop_returns_nothing():
    m = StopMatcher(("X",))
    assert m.feed("aXb") == ("a", True)
    assert m.flush() == ""


def test_several_stops_earliest_wins():
    m = StopMatcher(("world", "lo"))
    assert m.feed("hello world") == ("hel", True)


def test_several_stops_earliest_wins_regardless_of_order():
    for stops in [("B", "A"), ("A", "B")]:
        m = StopMatcher(stops)
        assert m.feed("xxAyyB") == ("xx", True)


def test_several_stops_partial_of_one_while_other_completes_later():
    m = StopMatcher(("###", "\n\n"))
    assert m.feed("a ##") == ("a ", False)
    assert m.feed("\n\n") == ("##", True)


def test_several_stops_hold_back_longest_partial():
    m = StopMatcher(("ab", "xyzab"))
    assert m.feed("qxyza") == ("q", False)
    assert m.feed("b") == ("", True)


def test_unicode_stop():
    out, stopped, _ = run(("。",), ["你好", "世界。", "再见"])
    assert stopped and "".join(out) == "你好世界"


@pytest.mark.parametrize("seed", range(40))
def test_random_chunking_agrees_with_reference(seed):
    """However the text is chunked, the matcher emits exactly the text before the earliest stop that is
    complete by the end of the chunk in which the first stop completes, and never emits part of a stop."""
    rng = random.Random(seed)
    alphabet = "ab\n#"
    text = "".join(rng.choice(alphabet) for _ in range(60))
    stops = tuple({"".join(rng.choice(alphabet) for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(1, 3))})
    chunks, i = [], 0
    while i < len(text):
        n = rng.randint(0, 5)
        chunks.append(text[i : i + n])
        i += n
    # reference: the first chunk end by which some stop is complete, and the earliest stop seen by then
    expected, expect_stop, end = text, False, 0
    for chunk in chunks:
        end += len(chunk)
        seen = [text[:end].find(s) for s in stops if s in text[:end]]
        if seen:
            expected, expect_stop = text[: min(seen)], True
            break
    out, stopped, rest = run(stops, chunks)
    assert stopped == expect_stop
    assert "".join(out) + rest == expected
    if stopped:
        assert rest == ""
