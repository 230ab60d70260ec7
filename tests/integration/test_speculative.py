"""Prompt-lookup speculation through the product (the session's node; the 2-stage pipeline is in test_cluster.py):
the same tokens as plain decoding, greedy and seeded, with the drafted and accepted tokens in usage."""

from __future__ import annotations

import openai
import pytest

from tests.conftest import MODEL, Node

pytestmark = pytest.mark.slow

TOKENS = 128
TEXT = (
    "The village of Elm Hollow sits at the bottom of a green valley, where the river bends twice before it "
    "reaches the old stone bridge. Every Monday morning the baker opens his shop at six o'clock, and the smell "
    "of fresh bread drifts along the main street. Children walk to the school on the hill, carrying their books "
    "in canvas bags, while the farmers bring apples, pears and cheese to the market square. In the afternoon the "
    "library opens its doors, and the librarian, a tall woman named Clara, reads stories to anyone who comes in."
)
REWRITE = [{"role": "user", "content": f"Rewrite this text exactly, but change Monday to Friday:\n\n{TEXT}"}]
SPECULATE = {"speculative": {"draft": "ngram", "tokens": 6}}


def chat(node: Node, speculate: bool, **sampling) -> tuple[str, dict]:  # noqa: ANN003
    client = openai.OpenAI(base_url=node.api_url, api_key="none", timeout=600, max_retries=0)
    r = client.chat.completions.create(
        model=MODEL, messages=REWRITE, max_tokens=TOKENS, extra_body=SPECULATE if speculate else None, **sampling
    )
    return r.choices[0].message.content or "", r.usage.model_dump()


def test_greedy_and_seeded_speculation_give_plain_decodings_tokens(node: Node) -> None:
    plain, plain_usage = chat(node, False, temperature=0)
    fast, usage = chat(node, True, temperature=0)
    assert fast == plain
    assert usage["completion_tokens"] == plain_usage["completion_tokens"] >= TOKENS // 2
    assert plain_usage["speculative"] == {"drafted_tokens": 0, "accepted_tokens": 0}
    drafted, accepted = usage["speculative"]["drafted_tokens"], usage["speculative"]["accepted_tokens"]
    assert drafted > 0 and accepted > usage["completion_tokens"] // 3, usage  # the rewrite copies most of the text
    assert usage["completion_tokens_details"]["rejected_prediction_tokens"] == drafted - accepted

    # Seeded: reproducible, and each position draws with the key plain decoding would use there, so the text is
    # plain sampling's on the default dense weights. (On exo's CPU kernel, opt-in, k verified rows and k single
    # steps differ in the last bits of attention, which its int8 activations can carry into a flipped draw.)
    seeded = chat(node, True, temperature=0.8, seed=11)
    assert chat(node, True, temperature=0.8, seed=11)[0] == seeded[0]
    assert chat(node, False, temperature=0.8, seed=11)[0] == seeded[0]


def test_a_bad_speculative_value_is_a_400_naming_it(node: Node) -> None:
    client = openai.OpenAI(base_url=node.api_url, api_key="none", timeout=60, max_retries=0)
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model=MODEL, messages=REWRITE, max_tokens=4, extra_body={"speculative": {"draft": "ngram", "tokens": 99}}
        )
    assert err.value.body["param"] == "speculative.tokens"  # type: ignore[index]
