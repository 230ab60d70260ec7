"""The Chat Completions sampling surface of one real node through the official `openai` client: logprobs (chat,
streamed, legacy completions), `n` choices, top_k/min_p, penalties, logit_bias, and what is refused by name."""

from __future__ import annotations

import openai
import pytest

from tests.conftest import MODEL, Node
from tests.shared_models import SharedModels

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
SHORT = 8


@pytest.fixture(scope="module")
def client(node: Node) -> openai.OpenAI:
    return openai.OpenAI(base_url=node.api_url, api_key="not-needed", timeout=120.0, max_retries=0)


def chat(client: openai.OpenAI, **kw):  # noqa: ANN003, ANN201
    return client.chat.completions.create(model=MODEL, messages=kw.pop("messages", QUESTION), **kw)


def test_chat_logprobs_one_per_token_with_the_top_alternatives(client: openai.OpenAI) -> None:
    r = chat(client, temperature=0, max_tokens=SHORT, logprobs=True, top_logprobs=3)
    choice = r.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content is not None
    entries = choice.logprobs.content
    assert r.usage is not None and len(entries) == r.usage.completion_tokens
    for e in entries:
        assert len(e.top_logprobs) == 3 and e.logprob <= 0.0
        assert e.top_logprobs[0].token == e.token  # greedy: the drawn token is the most likely one
        assert e.top_logprobs[0].logprob >= e.top_logprobs[1].logprob >= e.top_logprobs[2].logprob
        assert bytes(e.bytes or []).decode("utf-8", errors="replace") == e.token
    text = "".join(e.token for e in entries)
    content = choice.message.content or ""
    assert text == content if choice.finish_reason == "length" else text.startswith(content)


def test_streamed_logprobs_are_the_same_tokens(client: openai.OpenAI) -> None:
    whole = chat(client, temperature=0, max_tokens=SHORT, logprobs=True)
    stream = chat(client, temperature=0, max_tokens=SHORT, logprobs=True, stream=True,
                  stream_options={"include_usage": True})  # fmt: skip
    tokens, usage = [], None
    for chunk in stream:
        usage = chunk.usage or usage
        for c in chunk.choices:
            tokens += [e.token for e in (c.logprobs.content or [])] if c.logprobs else []
    assert usage is not None and len(tokens) == usage.completion_tokens
    assert tokens == [e.token for e in whole.choices[0].logprobs.content]  # type: ignore[union-attr]


def test_completions_logprobs_int(client: openai.OpenAI) -> None:
    r = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=SHORT, temperature=0,
                                  logprobs=2)  # fmt: skip
    lp = r.choices[0].logprobs
    assert lp is not None and r.usage is not None
    assert len(lp.tokens or []) == len(lp.token_logprobs or []) == r.usage.completion_tokens
    assert all(1 <= len(top) <= 2 for top in lp.top_logprobs or [])
    assert lp.text_offset == sorted(lp.text_offset or []) and (lp.text_offset or [None])[0] == 0


def test_n_choices_each_seeded_and_reproducible(client: openai.OpenAI) -> None:
    ask = dict(temperature=1.0, seed=11, max_tokens=12, logprobs=True)
    two = chat(client, n=2, **ask)
    assert [c.index for c in two.choices] == [0, 1]
    texts = [c.message.content for c in two.choices]
    assert texts[0] != texts[1]  # each choice its own seed schedule
    assert two.usage is not None
    assert two.usage.completion_tokens == sum(len(c.logprobs.content or []) for c in two.choices)  # type: ignore[union-attr]
    assert [c.message.content for c in chat(client, n=2, **ask).choices] == texts
    assert chat(client, **ask).choices[0].message.content == texts[0]  # choice 0 is the n=1 schedule

    streamed: dict[int, str] = {0: "", 1: ""}
    for chunk in chat(client, n=2, stream=True, **ask):
        for c in chunk.choices:
            streamed[c.index] += c.delta.content or ""
    assert [streamed[0], streamed[1]] == texts


def test_top_k_1_and_min_p_1_are_greedy(client: openai.OpenAI) -> None:
    greedy = chat(client, temperature=0, max_tokens=12).choices[0].message.content
    for extra in ({"top_k": 1}, {"min_p": 1.0}):
        r = chat(client, temperature=1.5, seed=3, max_tokens=12, extra_body=extra)
        assert r.choices[0].message.content == greedy, extra


def test_logit_bias_moves_the_first_token(client: openai.OpenAI, shared_models: SharedModels) -> None:
    from transformers import AutoTokenizer  # noqa: PLC0415 - only this test reads token ids

    first = chat(client, temperature=0, max_tokens=1, logprobs=True, top_logprobs=2).choices[0].logprobs
    assert first is not None and first.content
    top = first.content[0].top_logprobs
    tokenizer = AutoTokenizer.from_pretrained(str(shared_models.path()))
    banned, runner_up = (tokenizer.encode(t.token, add_special_tokens=False) for t in top)
    assert len(banned) == 1 and len(runner_up) == 1, (top, banned, runner_up)
    moved = chat(client, temperature=0, max_tokens=1, logprobs=True, logit_bias={str(banned[0]): -100})
    assert moved.choices[0].logprobs.content[0].token == top[1].token  # type: ignore[union-attr, index]


def test_penalties_change_a_repetitive_answer(client: openai.OpenAI) -> None:
    ask = dict(messages=[{"role": "user", "content": "Say hello hello hello hello hello hello hello."}],
               temperature=0, max_tokens=24)  # fmt: skip
    plain = chat(client, **ask).choices[0].message.content
    for extra in ({"presence_penalty": 2.0}, {"frequency_penalty": 2.0}, {"repetition_penalty": 2.0}):
        assert chat(client, extra_body=extra, **ask).choices[0].message.content != plain, extra


def test_non_text_content_part_is_400_naming_it(client: openai.OpenAI) -> None:
    parts = [{"type": "text", "text": "Describe"}, {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]
    with pytest.raises(openai.BadRequestError) as info:
        chat(client, messages=[{"role": "user", "content": parts}], max_tokens=2)
    assert info.value.body["param"] == "messages[0].content[1].type"  # type: ignore[index]
