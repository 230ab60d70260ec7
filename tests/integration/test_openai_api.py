"""The OpenAI API of one real node, through the official `openai` client (and httpx where the client hides things)."""

from __future__ import annotations

import time

import httpx
import nats
import openai
import pytest

from tests.conftest import MODEL, Node

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def client(node: Node) -> openai.OpenAI:
    return openai.OpenAI(base_url=node.api_url, api_key="not-needed", timeout=120.0, max_retries=0)


def test_health_shows_the_ready_instance(node: Node) -> None:
    health = node.health()
    assert health["status"] == "ok"
    assert health["nats_connected"] is True
    assert health["master"] in health["nodes"]
    assert len(health["nodes"]) == 1
    assert len(health["ready_instances"]) == 1
    assert health["events_applied"] > 0


def test_models_lists_smollm2(client: openai.OpenAI, node: Node) -> None:
    models = client.models.list()
    ids = [m.id for m in models.data]
    assert MODEL in ids
    raw = httpx.get(f"{node.api_url}/models", timeout=10).json()
    smol = next(m for m in raw["data"] if m["id"] == MODEL)
    assert smol["object"] == "model"
    assert smol["ready"] is True
    assert smol["context_length"] == 8192


def test_chat_non_streaming_answers_paris(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=40)
    assert response.object == "chat.completion"
    assert response.model == MODEL
    assert response.id.startswith("chatcmpl-")
    choice = response.choices[0]
    assert choice.message.role == "assistant"
    assert "Paris" in choice.message.content
    assert choice.finish_reason in ("stop", "length")
    usage = response.usage
    assert usage is not None
    assert usage.prompt_tokens > 5
    assert 0 < usage.completion_tokens <= 40
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_chat_streaming(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL, messages=QUESTION, temperature=0, max_tokens=40, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    assert chunks, "no chunks"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    with_choices = [c for c in chunks if c.choices]
    assert with_choices[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in with_choices)
    assert "Paris" in text
    finishes = [c.choices[0].finish_reason for c in with_choices if c.choices[0].finish_reason]
    assert len(finishes) == 1 and finishes[0] in ("stop", "length")
    assert with_choices[-1].choices[0].finish_reason == finishes[0], "finish_reason must come on the last chunk"
    # include_usage: one final chunk with no choices and the usage
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    assert last.usage.completion_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])

    # the same request, not streamed, gives the same text and token counts (temperature 0)
    whole = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=40)
    assert whole.choices[0].message.content == text
    assert whole.usage.prompt_tokens == last.usage.prompt_tokens
    assert whole.usage.completion_tokens == last.usage.completion_tokens


def test_streaming_without_include_usage_has_no_usage_chunk(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=4, stream=True))
    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "length"


def test_max_tokens_gives_length(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Write a long story about a dragon."}],
        temperature=0, max_tokens=5,
    )  # fmt: skip
    assert response.choices[0].finish_reason == "length"
    assert response.usage.completion_tokens == 5
    assert response.choices[0].message.content


def test_max_completion_tokens_is_honoured(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Count from one to one hundred."}],
        temperature=0, max_completion_tokens=3,
    )  # fmt: skip
    assert response.choices[0].finish_reason == "length"
    assert response.usage.completion_tokens == 3


def test_stop_string_cuts_the_text(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "Count from 1 to 10, separated by commas."}]
    full = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=16)
    full_text = full.choices[0].message.content
    # pick a stop string that the unconstrained answer contains, past its start
    stop = next((s for s in (" 3", "3", ",") if s in full_text[1:]), None)
    assert stop is not None, f"the model's answer has nothing to stop on: {full_text!r}"
    # streamed, where a stop string split over several tokens could leak before it is recognised
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=messages, temperature=0, max_tokens=16, stop=[stop], stream=True,
            stream_options={"include_usage": True},
        )  # fmt: skip
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert stop not in text
    assert text == full_text[: full_text.index(stop)]
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].usage.completion_tokens < full.usage.completion_tokens


def test_same_seed_same_text(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "Tell me something surprising about octopuses."}]

    def sample(seed: int) -> str:
        response = client.chat.completions.create(
            model=MODEL, messages=messages, temperature=1.0, seed=seed, max_tokens=12
        )
        return response.choices[0].message.content

    first, second, other = sample(1234), sample(1234), sample(99)
    assert first == second
    assert other != first, "a different seed at temperature 1 gave the same 12 tokens"


def test_completions_endpoint(client: openai.OpenAI) -> None:
    prompt = "The capital of France is"
    response = client.completions.create(model=MODEL, prompt=prompt, temperature=0, max_tokens=6)
    assert response.object == "text_completion"
    assert response.model == MODEL
    assert response.id.startswith("cmpl-")
    choice = response.choices[0]
    assert "Paris" in choice.text
    assert choice.finish_reason in ("stop", "length")
    assert 0 < response.usage.completion_tokens <= 6
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens

    chunks = list(
        client.completions.create(
            model=MODEL, prompt=prompt, temperature=0, max_tokens=6, stream=True,
            stream_options={"include_usage": True},
        )  # fmt: skip
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == choice.text
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == response.usage.completion_tokens
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [choice.finish_reason]


def test_content_parts_and_system_message(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": [{"type": "text", "text": "What is the capital of France?"}]},
        ],
        temperature=0,
        max_tokens=10,
    )
    assert "Paris" in response.choices[0].message.content


def test_stream_starts_before_the_prefill_ends(node: Node) -> None:
    """The runner acknowledges a request before its prefill ends (it must not block its NATS loop on MLX),
    so the gateway opens the SSE stream at once; the first content comes after the prefill.

    A long prompt makes the prefill long enough to tell the two apart."""
    words = " ".join(["apple", "pear", "plum"] * 20)  # ~80 prompt tokens: a CPU prefill of seconds here
    messages = [{"role": "user", "content": f"Here is a list of fruit: {words}. Which fruit comes first?"}]
    body = {"model": MODEL, "messages": messages, "temperature": 0, "max_tokens": 2, "stream": True}
    started = time.monotonic()
    with httpx.stream("POST", f"{node.api_url}/chat/completions", json=body, timeout=300) as response:
        headers_at = time.monotonic() - started
        assert response.status_code == 200
        first_content_at = None
        for line in response.iter_lines():
            if first_content_at is None and '"content":"' in line and '"content":""' not in line:
                first_content_at = time.monotonic() - started
    assert first_content_at is not None
    assert headers_at < max(0.5 * first_content_at, 0.3), (
        f"the stream opened only {headers_at:.2f} s after the request, {first_content_at - headers_at:.2f} s "
        "before its first token: the runner's submit reply waited for the prefill"
    )


async def test_a_request_larger_than_a_bus_message_is_served(client: openai.OpenAI, node: Node) -> None:
    """Four stop strings of 300 kB (a long prompt within the context would do the same, where a model's context
    holds more than 1 MB of text: SmolLM2's 8192 tokens do not): the runner's request is over the bus's
    max_payload, which used to give 500 'MaxPayloadError'. It travels in pieces now."""
    stops = [f"{i}" + "zq" * 150_000 for i in range(4)]
    nc = await nats.connect(node.nats_url)
    try:
        assert sum(len(s) for s in stops) > nc.max_payload  # the server's limit, 1 MB by default
    finally:
        await nc.close()
    question = "The capital of France is"
    plain = client.completions.create(model=MODEL, prompt=question, temperature=0, max_tokens=8)
    big = client.completions.create(model=MODEL, prompt=question, temperature=0, max_tokens=8, stop=stops)
    assert big.choices[0].text == plain.choices[0].text
    assert big.usage.prompt_tokens == plain.usage.prompt_tokens
    streamed = list(client.completions.create(model=MODEL, prompt=question, temperature=0, max_tokens=8,
                                              stop=stops, stream=True))  # fmt: skip
    assert "".join(c.choices[0].text for c in streamed if c.choices) == plain.choices[0].text
    # a stop string past the first piece still stops the text
    assert "Paris" in plain.choices[0].text
    cut = client.completions.create(model=MODEL, prompt=question, temperature=0, max_tokens=8,
                                    stop=[*stops[:3], "Paris"])  # fmt: skip
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].text == plain.choices[0].text[: plain.choices[0].text.index("Paris")]
