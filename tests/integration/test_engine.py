"""The runner as an engine, on real nodes and the real model: continuous batching, cancel frees a slot,
a bounded queue (429), the prefix cache, seeded and greedy determinism whatever shares the batch, and what the
last chunk of a request records."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import msgspec
import nats
import openai
import pytest

from shared import subjects
from shared.generation import GenerateAccepted, GenerateReply, GenerateRequest, SamplingParams, TokenChunk
from tests.conftest import MODEL, Node

pytestmark = pytest.mark.slow

STORY = [{"role": "user", "content": "Write a very long story about a dragon who learns to bake bread."}]


def ask(client: openai.OpenAI, content: str, **kwargs) -> tuple[str, openai.types.CompletionUsage, str]:
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": content}], **kwargs)
    return r.choices[0].message.content, r.usage, r.choices[0].finish_reason


def in_parallel(calls: list[Callable[[], object]]) -> list[object]:
    results: list[object] = [None] * len(calls)

    def run(i: int) -> None:
        try:
            results[i] = calls[i]()
        except Exception as exc:  # noqa: BLE001 - reported by the assertion of the caller
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    return results


@pytest.fixture(scope="module")
def client(node: Node) -> openai.OpenAI:
    return openai.OpenAI(base_url=node.api_url, api_key="none", timeout=300.0, max_retries=0)


def test_concurrent_streams_all_complete_with_their_own_limits(client: openai.OpenAI) -> None:
    limits = [3, 5, 7, 9, 11, 4]
    results = in_parallel(
        [lambda n=n: ask(client, f"Count from 1 to 50, number {n}.", max_tokens=n, temperature=0) for n in limits]
    )
    for n, result in zip(limits, results):
        assert not isinstance(result, Exception), result
        text, usage, finish = result
        assert text
        assert finish in ("length", "stop")
        assert usage.completion_tokens == n if finish == "length" else usage.completion_tokens <= n
        assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_greedy_output_is_the_same_batched_and_alone(client: openai.OpenAI) -> None:
    question = "Name three colours of the rainbow."
    alone = ask(client, question, max_tokens=16, temperature=0)[0]
    others = [lambda i=i: ask(client, f"Tell me a fact about the number {i}.", max_tokens=16, temperature=0.9)
              for i in range(4)]  # fmt: skip
    batched = in_parallel([lambda: ask(client, question, max_tokens=16, temperature=0), *others])
    assert not isinstance(batched[0], Exception), batched[0]
    assert batched[0][0] == alone


def test_seeded_request_gives_one_text_alone_and_its_agreement_inside_a_busy_batch(client: openai.OpenAI, node: Node) -> None:
    """Alone, a seeded request gives one text every time. Inside a busy batch the seed schedule is the same
    (tests/integration/test_engine_determinism.py shows the texts are identical with MLX's reference BLAS). With
    exo's CPU kernel (the default where the CPU has AVX2) every row is computed as it is alone, so the text is the
    same in the batch too (measured: all 50 characters, 5 of 5). Without it the runner's fast BLAS (MKL/OpenBLAS)
    picks kernels by the number of rows in a matmul, so a batch of 4 rounds differently from a batch of 1; at
    temperature 1 a near-tie can then flip a token (measured: divergence from the 2nd-10th token in most busy
    runs), and only the first word (from the prefill) is asserted."""

    def seeded() -> str:
        return ask(client, "Invent a name for a cat.", max_tokens=12, temperature=1.0, seed=1234)[0]

    alone = {seeded() for _ in range(5)}
    assert len(alone) == 1
    (text,) = alone
    noise = [lambda i=i: ask(client, f"Say something random {i}.", max_tokens=12, temperature=1.0) for i in range(3)]
    busy = in_parallel([seeded, seeded, *noise, seeded, seeded, seeded])
    seeded_results = [busy[i] for i in (0, 1, 5, 6, 7)]
    assert all(isinstance(r, str) and r for r in seeded_results), seeded_results
    first_word = text.split()[0]
    agreement = [next((i for i, (a, b) in enumerate(zip(r, text)) if a != b), min(len(r), len(text))) for r in seeded_results]
    print(f"seeded in a busy batch: {agreement} leading characters agree with the text alone ({len(text)})")
    assert all(r.startswith(first_word) for r in seeded_results), (text, seeded_results)
    details = node.runner_details()
    if any("exo-kernel" in d for d in details):
        assert seeded_results == [text] * len(seeded_results), (details, text, seeded_results)


def test_prefix_cache_hit_is_reported_in_usage(client: openai.OpenAI) -> None:
    system = "You are a librarian. " + " ".join(f"Shelf {i} holds books about topic {i}." for i in range(30))
    messages = [{"role": "system", "content": system}, {"role": "user", "content": "Where are the maps?"}]
    first = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=4, temperature=0)
    follow_up = messages + [
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": "And the atlases?"},
    ]
    second = client.chat.completions.create(model=MODEL, messages=follow_up, max_tokens=4, temperature=0)
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached >= first.usage.prompt_tokens - 1, (cached, first.usage.prompt_tokens)
    assert cached < second.usage.prompt_tokens


@pytest.fixture(scope="module")
def tiny_node(start_node: Callable[..., Node]) -> Iterator[Node]:
    """One batch slot and no waiting room: the second concurrent request is over the queue bound."""
    n = start_node("one-slot", "--max-batch", "1", "--max-waiting", "0")
    yield n
    n.stop()


def open_stream(node: Node, max_tokens: int = 2000) -> tuple[httpx.Client, httpx.Response, Iterator[str]]:
    """A stream that holds a slot, once its tokens flow. Keep all three: the line iterator too, since dropping
    it closes the response (httpx's generator closes its stream), and the gateway then cancels the request."""
    http = httpx.Client(timeout=60)
    # greedy: this prompt's greedy reply runs past 400 tokens, so the stream holds the slot for the whole test
    # (sampled at the default temperature, 1 story in 60 ended within 40 tokens)
    body = {"model": MODEL, "messages": STORY, "max_tokens": max_tokens, "stream": True, "temperature": 0}
    deadline = time.monotonic() + 20
    while True:  # the previous test's cancelled stream frees the only slot asynchronously
        response = http.send(http.build_request("POST", f"{node.api_url}/chat/completions", json=body), stream=True)
        if response.status_code != 429 or time.monotonic() > deadline:
            break
        response.close()
        time.sleep(0.2)
    assert response.status_code == 200
    lines = response.iter_lines()
    for line in lines:  # wait until tokens flow: the request holds the only slot
        if line.startswith("data: ") and '"content":"' in line and '"content":""' not in line:
            break
    return http, response, lines


def test_queue_overflow_answers_429_with_retry_after(tiny_node: Node) -> None:
    http, stream, _lines = open_stream(tiny_node)
    try:
        r = httpx.post(
            f"{tiny_node.api_url}/chat/completions",
            json={"model": MODEL, "messages": STORY, "max_tokens": 4},
            timeout=30,
        )
        assert r.status_code == 429, r.text
        assert int(r.headers["retry-after"]) >= 1
        assert r.json()["error"]["type"] == "rate_limit_error"
    finally:
        stream.close()
        http.close()


def test_cancel_mid_stream_frees_the_slot(tiny_node: Node) -> None:
    http, stream, _lines = open_stream(tiny_node)
    stream.close()  # the client goes away mid-stream
    http.close()
    deadline = time.monotonic() + 20
    while True:
        r = httpx.post(
            f"{tiny_node.api_url}/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3},
            timeout=60,
        )
        if r.status_code == 200 or time.monotonic() > deadline:
            break
        assert r.status_code == 429, r.text
        time.sleep(0.2)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] >= 1


# -- the generation contract on the bus ----------------------------------------------------------------------


async def generate_on_the_bus(node: Node, request: GenerateRequest) -> tuple[GenerateAccepted, list[TokenChunk]]:
    """What the gateway does: submit to the instance's runner, read the request's chunks to the last."""
    (instance_id,) = node.health()["ready_instances"]
    nc = await nats.connect(node.nats_url_as("gateway"))  # as a gateway: it may ask runners
    chunks: list[TokenChunk] = []
    done = asyncio.Event()

    async def on_chunk(msg) -> None:  # noqa: ANN001
        chunks.append(msgspec.json.decode(msg.data, type=TokenChunk))
        if chunks[-1].finish_reason is not None:
            done.set()

    try:
        await nc.subscribe(subjects.tokens(request.request_id), cb=on_chunk)
        reply = await nc.request(subjects.runner_generate(instance_id), msgspec.json.encode(request), timeout=30)
        accepted = msgspec.json.decode(reply.data, type=GenerateReply)
        assert isinstance(accepted, GenerateAccepted), accepted
        await asyncio.wait_for(done.wait(), 120)
    finally:
        await nc.close()
    return accepted, chunks


async def test_the_last_chunk_says_what_the_finished_request_was(node: Node) -> None:
    sampled = SamplingParams(max_tokens=8, temperature=1.0)  # no seed: admission fixes one
    prompt = "Here is a list of fifty fruits: apple, banana, cherry,"  # a sampled end of text within 8 tokens is rare
    request = GenerateRequest(f"req-test-{time.monotonic_ns()}", MODEL, sampled, prompt=prompt)
    accepted, chunks = await generate_on_the_bus(node, request)
    *before, last = chunks
    assert all(c.finished is None for c in before)
    done = last.finished
    assert done is not None
    assert done.finish_reason == last.finish_reason
    assert done.finish_reason == "length" or (done.finish_reason == "stop" and done.completion_tokens < 8)
    assert done.seed is not None and done.seed == accepted.seed
    assert done.prompt_tokens == accepted.prompt_tokens == last.prompt_tokens > 3
    assert 0 <= done.cached_tokens < done.prompt_tokens
    assert done.completion_tokens == last.completion_tokens <= 8
    assert done.completion_tokens >= 2, "the test needs two tokens to see a decode rate"
    assert done.time_to_first_token_s is not None and 0 < done.time_to_first_token_s <= done.total_s < 120
    assert done.decode_tokens_per_s is not None and 0.5 < done.decode_tokens_per_s < 10_000
    assert (done.strategy, done.device_count) == ("pipeline", 1)

    # the seed recorded is the one the tokens came from: asked again with it, the same text
    again = GenerateRequest(f"req-test-{time.monotonic_ns()}", MODEL, msgspec.structs.replace(sampled, seed=done.seed),
                            prompt=prompt)  # fmt: skip
    _, replay = await generate_on_the_bus(node, again)
    assert "".join(c.text for c in replay) == "".join(c.text for c in chunks)
    assert replay[-1].finished is not None and replay[-1].finished.seed == done.seed
    assert replay[-1].finished.cached_tokens > 0  # the same prompt again: its prefix came from the cache


async def test_a_greedy_request_records_no_seed_and_a_stop(node: Node) -> None:
    greedy = SamplingParams(max_tokens=200, temperature=0.0, stop=(",", ".", "\n"))
    request = GenerateRequest(f"req-test-{time.monotonic_ns()}", MODEL, greedy, prompt="Paris is the capital of")
    _, chunks = await generate_on_the_bus(node, request)
    done = chunks[-1].finished
    assert done is not None and done.finish_reason == "stop" and done.seed is None
    assert 1 <= done.completion_tokens < 200
