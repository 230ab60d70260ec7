"""Speculation through the product (the session's node; the 2-stage pipeline is in test_cluster.py): prompt lookup
and a draft model on an instance of its own (SmolLM2 placed a second time drafts for itself: greedy, it agrees
almost always), the same tokens as plain decoding, with the drafted and accepted tokens in usage; a draft
runner killed mid-request leaves the request to finish plain, with the same tokens."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from shared.runner_record import read_record
from tests.conftest import MODEL, Node, wait_for

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
KILL_AFTER_CHUNKS = 8
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
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model=MODEL, messages=REWRITE, max_tokens=4, extra_body={"speculative": {"draft": "gpt-17", "tokens": 4}}
        )
    assert err.value.body["param"] == "speculative.draft" and "gpt-17" in err.value.message  # type: ignore[index]


@pytest.fixture(scope="module")
def draft_instance(node: Node) -> Iterator[str]:
    """A second instance of the model on the session's node, to draft; deleted after this file's tests."""
    created = httpx.post(f"{node.base_url}/instances", json={"model": MODEL}, timeout=60)
    assert created.status_code == 201, created.text
    iid = created.json()["instance_id"]
    node.wait_until(lambda h: iid in h["ready_instances"], 180, "the draft instance ready")
    yield iid
    assert httpx.delete(f"{node.base_url}/instances/{iid}", timeout=60).status_code == 200
    node.wait_until(lambda h: iid not in h["ready_instances"], 60, "the draft instance gone")


def test_two_instances_drafting_for_each_other_both_speculate(node: Node, draft_instance: str) -> None:
    """Round robin puts two requests on the two instances, each the other's draft: both speculate, with the same
    tokens. (Both threads waiting at once is a race this rarely hits; test_mlx_work.py makes it happen.)"""
    by_model = {"speculative": {"draft": MODEL, "tokens": 4}}
    client = openai.OpenAI(base_url=node.api_url, api_key="none", timeout=600, max_retries=0)
    with ThreadPoolExecutor(2) as pool:
        done = list(pool.map(lambda _: client.chat.completions.create(
            model=MODEL, messages=REWRITE, max_tokens=48, temperature=0, extra_body=by_model), range(2)))  # fmt: skip
    assert done[0].choices[0].message.content == done[1].choices[0].message.content
    for r in done:
        spec = r.usage.model_dump()["speculative"]  # type: ignore[union-attr]
        assert spec["drafted_tokens"] >= 24 and spec["accepted_tokens"] >= 0.7 * spec["drafted_tokens"], spec


def test_a_draft_model_gives_plain_decodings_tokens_and_a_dead_one_leaves_plain_decoding(node: Node, draft_instance: str) -> None:
    plain, plain_usage = chat(node, False, temperature=0)
    by_model = {"speculative": {"draft": MODEL, "tokens": 4}}  # resolved to an instance other than the main one
    client = openai.OpenAI(base_url=node.api_url, api_key="none", timeout=600, max_retries=0)
    r = client.chat.completions.create(model=MODEL, messages=REWRITE, max_tokens=TOKENS, temperature=0, extra_body=by_model)
    usage = r.usage.model_dump()  # type: ignore[union-attr]
    assert r.choices[0].message.content == plain and usage["completion_tokens"] == plain_usage["completion_tokens"]
    drafted, accepted = usage["speculative"]["drafted_tokens"], usage["speculative"]["accepted_tokens"]
    assert drafted >= usage["completion_tokens"] // 2 and accepted >= 0.7 * drafted, usage  # it drafts for itself

    # Named by its instance: the main request goes to the other instance. Its runner is killed after a few
    # tokens; the request goes on plain, with the same tokens.
    record = read_record(node.state_dir / "runners" / f"{draft_instance}-0.json")
    assert record is not None
    named = {"speculative": {"draft": draft_instance, "tokens": 4}}
    stream = client.chat.completions.create(model=MODEL, messages=REWRITE, max_tokens=TOKENS, temperature=0,
                                            extra_body=named, stream=True, stream_options={"include_usage": True})  # fmt: skip
    parts, last = [], None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            if len(parts) == KILL_AFTER_CHUNKS:
                os.kill(record.pid, signal.SIGKILL)
            parts.append(chunk.choices[0].delta.content)
        last = chunk
    assert "".join(parts) == plain
    assert last is not None and last.usage is not None
    killed = last.usage.model_dump()["speculative"]
    assert killed["drafted_tokens"] < drafted, killed  # speculation stopped early
    wait_for(lambda: _stepped_aside_for_the_draft(node), 30, "the runner's log of why speculation stopped", node)


def _stepped_aside_for_the_draft(node: Node) -> bool:
    """No responders (the usual case), or a call in flight when the runner died (its timeout)."""
    lines = [line for path in node.runner_logs() for line in path.read_text(errors="replace").splitlines()]
    return any("speculation steps aside" in line and ("no draft runner answers" in line or "did not answer" in line)
               for line in lines)  # fmt: skip


def test_an_instances_default_speculation_serves_requests_that_ask_none(start_node) -> None:  # noqa: ANN001
    """POST /instances {"speculative": ...} sets the instance's default; a request's own field wins, "none" too."""
    own = start_node("spec-default", "--no-model")
    try:
        own.wait_until(lambda h: len(h["nodes"]) == 1, 60, "its worker")
        bad = httpx.post(f"{own.base_url}/instances", json={"model": MODEL, "speculative": {"draft": "gpt-17"}}, timeout=30)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "speculative.draft", bad.text
        made = httpx.post(f"{own.base_url}/instances", json={"model": MODEL, "speculative": {"draft": "ngram", "tokens": 6}},
                          timeout=30)  # fmt: skip
        assert made.status_code == 201, made.text
        assert made.json()["speculative"] == {"draft": "ngram", "tokens": 6, "draft_instance": None}
        own.wait_ready(timeout=180)
        client = openai.OpenAI(base_url=own.api_url, api_key="none", timeout=600, max_retries=0)

        def ask(extra: dict | None) -> tuple[str, dict]:
            r = client.chat.completions.create(model=MODEL, messages=REWRITE, max_tokens=48, temperature=0, extra_body=extra)
            return r.choices[0].message.content or "", r.usage.model_dump()["speculative"]  # type: ignore[union-attr]

        by_default, spec = ask(None)
        assert spec["drafted_tokens"] > 0 and spec["accepted_tokens"] > 0, spec
        plain, none = ask({"speculative": {"draft": "none"}})
        assert none == {"drafted_tokens": 0, "accepted_tokens": 0} and plain == by_default
    finally:
        own.stop()
