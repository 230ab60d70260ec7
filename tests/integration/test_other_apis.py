"""The Anthropic, Responses and Ollama APIs of one real node through their official clients, unchanged: each
gives the text Chat Completions gives for the same prompt and settings, its own usage, stop and error shapes."""

from __future__ import annotations

import anthropic
import httpx
import ollama
import openai
import pytest

from tests.conftest import MODEL, Node

pytestmark = pytest.mark.slow

QUESTION = "What is the capital of France?"
MAX = 12
# anthropic 2.x's create() has no temperature parameter any more (the API still takes one): sent as extra body
GREEDY = {"extra_body": {"temperature": 0}}


@pytest.fixture(scope="module")
def oai(node: Node) -> openai.OpenAI:
    return openai.OpenAI(base_url=node.api_url, api_key="not-needed", timeout=120.0, max_retries=0)


@pytest.fixture(scope="module")
def claude(node: Node) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=node.base_url, api_key="not-needed", timeout=120.0, max_retries=0)


@pytest.fixture(scope="module")
def olla(node: Node) -> ollama.Client:
    return ollama.Client(host=node.base_url, timeout=120.0)


@pytest.fixture(scope="module")
def reference(oai: openai.OpenAI):  # noqa: ANN201
    """Chat Completions' greedy answer: what every other API must give for the same prompt and settings."""
    r = oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": QUESTION}], temperature=0,
                                    max_tokens=MAX)  # fmt: skip
    assert r.choices[0].message.content and r.usage is not None
    return r


def a_stop_word(text: str) -> str:
    """A word of the reference text past its start: stopping there must cut the text just before it."""
    words = [w for w in text.split() if len(w) > 2]
    assert len(words) >= 2, text
    return words[1]


# --- Anthropic Messages ---


def test_anthropic_plain_equals_chat(claude: anthropic.Anthropic, reference) -> None:  # noqa: ANN001
    m = claude.messages.create(model=MODEL, max_tokens=MAX, **GREEDY, messages=[{"role": "user", "content": QUESTION}])
    assert m.type == "message" and m.role == "assistant" and m.id.startswith("msg_")
    assert m.content[0].type == "text"
    assert m.content[0].text == reference.choices[0].message.content
    assert m.usage.input_tokens == reference.usage.prompt_tokens
    assert m.usage.output_tokens == reference.usage.completion_tokens
    expected = "max_tokens" if reference.choices[0].finish_reason == "length" else "end_turn"
    assert m.stop_reason == expected and m.stop_sequence is None


def test_anthropic_streams_in_order(claude: anthropic.Anthropic, reference) -> None:  # noqa: ANN001
    kinds, text = [], ""
    with claude.messages.stream(model=MODEL, max_tokens=MAX, **GREEDY, system=[{"type": "text", "text": ""}],
                                messages=[{"role": "user", "content": [{"type": "text", "text": QUESTION}]}]) as s:  # fmt: skip
        for event in s:
            kinds.append(event.type)
            if event.type == "content_block_delta":
                text += event.delta.text
        final = s.get_final_message()
    raw = [k for k in kinds if k not in ("text",)]  # the helper adds its own "text" events
    assert raw[:2] == ["message_start", "content_block_start"]
    assert raw[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert text == reference.choices[0].message.content == final.content[0].text
    assert final.usage.output_tokens == reference.usage.completion_tokens
    assert final.usage.input_tokens == reference.usage.prompt_tokens


def test_anthropic_stop_sequence(claude: anthropic.Anthropic, reference) -> None:  # noqa: ANN001
    full = reference.choices[0].message.content
    word = a_stop_word(full)
    m = claude.messages.create(model=MODEL, max_tokens=MAX, **GREEDY, stop_sequences=[word],
                               messages=[{"role": "user", "content": QUESTION}])  # fmt: skip
    assert m.stop_reason == "stop_sequence" and m.stop_sequence == word
    assert m.content[0].text == full[: full.index(word)]


def test_anthropic_count_tokens(claude: anthropic.Anthropic, oai: openai.OpenAI, reference) -> None:  # noqa: ANN001
    counted = claude.messages.count_tokens(model=MODEL, messages=[{"role": "user", "content": QUESTION}])
    assert counted.input_tokens == reference.usage.prompt_tokens
    system = [{"type": "text", "text": "Be brief. "}, {"type": "text", "text": "Answer in French."}]
    with_system = claude.messages.count_tokens(model=MODEL, system=system, messages=[{"role": "user", "content": QUESTION}])
    chat = oai.chat.completions.create(model=MODEL, max_tokens=1, messages=[
        {"role": "system", "content": "Be brief. Answer in French."}, {"role": "user", "content": QUESTION}])
    assert with_system.input_tokens == chat.usage.prompt_tokens != counted.input_tokens


def test_anthropic_errors_in_its_shape(claude: anthropic.Anthropic, node: Node) -> None:
    r = httpx.post(f"{node.base_url}/v1/messages", json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 400
    body = r.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in body["error"]["message"]
    with pytest.raises(anthropic.NotFoundError) as caught:
        claude.messages.create(model="no-such-model", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert caught.value.body["type"] == "error" and caught.value.body["error"]["type"] == "not_found_error"


# --- OpenAI Responses ---


def test_responses_plain_equals_chat(oai: openai.OpenAI, reference) -> None:  # noqa: ANN001
    r = oai.responses.create(model=MODEL, input=QUESTION, temperature=0, max_output_tokens=MAX)
    assert r.object == "response" and r.id.startswith("resp_")
    assert r.output_text == reference.choices[0].message.content
    assert r.usage.input_tokens == reference.usage.prompt_tokens
    assert r.usage.output_tokens == reference.usage.completion_tokens
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    assert r.status == ("incomplete" if reference.choices[0].finish_reason == "length" else "completed")


def test_responses_stream(oai: openai.OpenAI, reference) -> None:  # noqa: ANN001
    items = [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": QUESTION}]}]
    events = list(oai.responses.create(model=MODEL, input=items, temperature=0, max_output_tokens=MAX, stream=True))
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]  # fmt: skip
    assert kinds[-4:-1] == ["response.output_text.done", "response.content_part.done", "response.output_item.done"]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == reference.choices[0].message.content == events[-1].response.output_text
    assert events[-1].response.usage.output_tokens == reference.usage.completion_tokens


def test_responses_instructions_and_unknown_model(oai: openai.OpenAI) -> None:
    r = oai.responses.create(model=MODEL, instructions="Answer in one word.", input=QUESTION, temperature=0,
                             max_output_tokens=4)  # fmt: skip
    assert r.usage.output_tokens <= 4 and r.output_text
    with pytest.raises(openai.NotFoundError):
        oai.responses.create(model="no-such-model", input="hi")


# --- Ollama ---


def test_ollama_chat_equals_chat(olla: ollama.Client, reference) -> None:  # noqa: ANN001
    r = olla.chat(model=MODEL, messages=[{"role": "user", "content": QUESTION}], stream=False,
                  options={"temperature": 0, "num_predict": MAX})  # fmt: skip
    assert r.message.content == reference.choices[0].message.content
    assert r.done and r.done_reason == ("length" if reference.choices[0].finish_reason == "length" else "stop")
    assert r.eval_count == reference.usage.completion_tokens
    assert r.prompt_eval_count == reference.usage.prompt_tokens
    assert r.total_duration > 0 and r.eval_duration > 0


def test_ollama_chat_streams_lines(olla: ollama.Client, reference) -> None:  # noqa: ANN001
    parts = list(olla.chat(model=MODEL, messages=[{"role": "user", "content": QUESTION}], stream=True,
                           options={"temperature": 0, "num_predict": MAX}))  # fmt: skip
    assert all(not p.done for p in parts[:-1]) and parts[-1].done
    assert "".join(p.message.content for p in parts) == reference.choices[0].message.content
    assert parts[-1].eval_count == reference.usage.completion_tokens
    # Ollama streams unless told not to (its Python client says stream=False by default, curl users do not)
    raw = httpx.post(f"{olla._client.base_url}/api/chat", timeout=120, json={
        "model": MODEL, "messages": [{"role": "user", "content": QUESTION}], "options": {"temperature": 0, "num_predict": MAX}})
    assert raw.headers["content-type"].startswith("application/x-ndjson")
    assert len(raw.text.splitlines()) == len(parts)


def test_ollama_generate_seeded_and_stop(olla: ollama.Client, oai: openai.OpenAI, reference) -> None:  # noqa: ANN001
    seeded = oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": QUESTION}],
                                         temperature=0.9, seed=7, max_tokens=MAX)  # fmt: skip
    r = olla.generate(model=MODEL, prompt=QUESTION, stream=False, options={"temperature": 0.9, "seed": 7, "num_predict": MAX})
    assert r.response == seeded.choices[0].message.content
    full = reference.choices[0].message.content
    word = a_stop_word(full)
    cut = olla.generate(model=MODEL, prompt=QUESTION, stream=False, options={"temperature": 0, "num_predict": MAX, "stop": [word]})
    assert cut.response == full[: full.index(word)] and cut.done_reason == "stop"


def test_ollama_model_routes_and_errors(olla: ollama.Client, node: Node) -> None:
    assert MODEL in [m.model for m in olla.list().models]
    assert [m.model for m in olla.ps().models] == [MODEL]
    shown = olla.show(MODEL)
    assert shown.modelinfo["llama.context_length"] == 8192
    assert httpx.get(f"{node.base_url}/api/version").json()["version"]
    with pytest.raises(ollama.ResponseError) as caught:
        olla.chat(model="no-such-model", messages=[{"role": "user", "content": "hi"}], stream=False)
    assert caught.value.status_code == 404 and "no-such-model" in caught.value.error
    r = httpx.post(f"{node.base_url}/api/chat", json={"model": MODEL, "messages": [{"role": "user", "content": "x"}],
                                                      "options": {"mirostat": 1}})  # fmt: skip
    assert r.status_code == 400 and "mirostat" in r.json()["error"]
