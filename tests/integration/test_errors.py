"""OpenAI-shaped errors from a real node: bad bodies, unknown models, impossible lengths, no instance."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import nats
import openai
import pytest

from shared import subjects
from tests.conftest import MODEL, Node, micro_replies

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
CONTEXT = 8192


def assert_openai_error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]
    return error


@pytest.fixture(scope="module")
def http(node: Node) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=node.api_url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def client(node: Node) -> openai.OpenAI:
    return openai.OpenAI(base_url=node.api_url, api_key="not-needed", timeout=60.0, max_retries=0)


def post_chat(http: httpx.Client, body: dict | bytes) -> httpx.Response:
    if isinstance(body, bytes):
        return http.post("/chat/completions", content=body, headers={"content-type": "application/json"})
    return http.post("/chat/completions", json=body)


@pytest.mark.parametrize(
    "raw",
    [b'{"model": "smollm2-135m", "messages": [', b"not json at all", b""],
    ids=["truncated", "garbage", "empty"],
)
def test_malformed_json_is_400(http: httpx.Client, raw: bytes) -> None:
    error = assert_openai_error(post_chat(http, raw), 400)
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    "body",
    [
        {"model": MODEL, "messages": "hello"},
        {"model": MODEL, "messages": QUESTION, "max_tokens": "five"},
        {"model": MODEL, "messages": QUESTION, "temperature": "hot"},
        {"model": 42, "messages": QUESTION},
        {"messages": QUESTION},
        {"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}]},
    ],
    ids=["messages-str", "max_tokens-str", "temperature-str", "model-int", "model-missing", "bad-role"],
)
def test_wrong_field_type_is_400(http: httpx.Client, body: dict) -> None:
    error = assert_openai_error(post_chat(http, body), 400)
    assert error["type"] == "invalid_request_error"


def test_completions_wrong_type_is_400(http: httpx.Client) -> None:
    assert_openai_error(http.post("/completions", json={"model": MODEL, "prompt": 12}), 400)


def test_unknown_model_is_404(client: openai.OpenAI, http: httpx.Client) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-17", messages=QUESTION)
    assert "gpt-17" in str(info.value)
    error = assert_openai_error(post_chat(http, {"model": "gpt-17", "messages": QUESTION}), 404)
    assert error["code"] == "model_not_found"
    assert error["param"] == "model"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-17", prompt="hi")


def test_unknown_route_is_404_in_openai_shape(http: httpx.Client) -> None:
    assert_openai_error(http.get("/no/such/route"), 404)


@pytest.mark.parametrize("max_tokens", [10**6, CONTEXT + 1])
def test_max_tokens_beyond_context_is_400(client: openai.OpenAI, http: httpx.Client, max_tokens: int) -> None:
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=max_tokens)
    error = assert_openai_error(post_chat(http, {"model": MODEL, "messages": QUESTION, "max_tokens": max_tokens}), 400)
    assert error["param"] == "max_tokens"


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
@pytest.mark.parametrize("value", [0, -1])
def test_max_tokens_below_one_is_400(http: httpx.Client, field: str, value: int) -> None:
    error = assert_openai_error(post_chat(http, {"model": MODEL, "messages": QUESTION, field: value}), 400)
    assert error["param"] == "max_tokens"


def test_empty_messages_is_400(client: openai.OpenAI, http: httpx.Client) -> None:
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=[])
    error = assert_openai_error(post_chat(http, {"model": MODEL, "messages": []}), 400)
    assert error["param"] == "messages"


@pytest.mark.parametrize(
    "extra",
    [{"temperature": 3.0}, {"temperature": -0.5}, {"top_p": 0}, {"top_p": 1.5}, {"n": 9},
     {"stop": ["a", "b", "c", "d", "e"]}, {"top_k": -2}, {"min_p": 1.5}, {"presence_penalty": 3},
     {"frequency_penalty": -2.5}, {"repetition_penalty": 0}, {"logit_bias": {"x": 1}}, {"logit_bias": {"5": 101}},
     {"logit_bias": {"99999999": 1}}, {"top_logprobs": 21, "logprobs": True}, {"top_logprobs": 2},
     {"best_of": 2}],  # fmt: skip
    ids=["temp-high", "temp-negative", "top_p-zero", "top_p-high", "n-9", "five-stops", "top_k", "min_p",
         "presence", "frequency", "repetition", "bias-key", "bias-value", "bias-vocab", "top_logprobs",
         "top_logprobs-alone", "unknown-field"],  # fmt: skip
)
def test_out_of_range_sampling_is_400(http: httpx.Client, extra: dict) -> None:
    error = assert_openai_error(post_chat(http, {"model": MODEL, "messages": QUESTION, **extra}), 400)
    assert error["param"] == next(iter(extra))


def test_prompt_plus_max_tokens_beyond_context_is_400(client: openai.OpenAI, http: httpx.Client, node: Node) -> None:
    long_prompt = " ".join(["word"] * 9000)  # ~9000 tokens: alone more than the 8192-token context
    started = time.monotonic()
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": long_prompt}], max_tokens=10)
    assert "context" in str(info.value)
    # rejected by counting tokens, not by running a 9000-token prefill
    assert time.monotonic() - started < 20
    # a prompt that fits, whose max_tokens does not fit in what is left of the context
    half = " ".join(["word"] * 5000)
    response = post_chat(http, {"model": MODEL, "messages": [{"role": "user", "content": half}], "max_tokens": 4000})
    error = assert_openai_error(response, 400)
    assert error["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=MODEL, prompt=long_prompt, max_tokens=1)
    # without max_tokens, a prompt that fills the whole context leaves no room: 400 as well
    assert_openai_error(post_chat(http, {"model": MODEL, "messages": [{"role": "user", "content": long_prompt}]}), 400)
    assert node.health()["ready_instances"], "the runner must still be ready after rejecting"


def test_errors_in_a_stream_request_come_before_the_stream(http: httpx.Client) -> None:
    """A stream=True request that cannot be served gets a plain JSON error with its status, not an SSE stream."""
    response = post_chat(http, {"model": MODEL, "messages": QUESTION, "max_tokens": 10**6, "stream": True})
    assert_openai_error(response, 400)
    response = post_chat(http, {"model": "nope", "messages": QUESTION, "stream": True})
    assert_openai_error(response, 404)


# -- a node with no model placed ------------------------------------------------------------------


@pytest.fixture(scope="module")
def bare_node(start_node: Callable[..., Node]) -> Iterator[Node]:
    n = start_node("no-model", "--no-model")
    yield n
    n.stop()


def test_no_instance_is_503_until_one_is_created(bare_node: Node) -> None:
    bare_node.wait_until(lambda h: h["master"] is not None and h["nodes"], 30, "master and node facts")
    client = openai.OpenAI(base_url=bare_node.api_url, api_key="x", timeout=60.0, max_retries=0)
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=3)
    assert info.value.status_code == 503
    assert "no instance" in info.value.message and "placed" in info.value.message
    assert "POST /instances" in info.value.message
    error = assert_openai_error(
        httpx.post(f"{bare_node.api_url}/chat/completions", json={"model": MODEL, "messages": QUESTION}, timeout=30),
        503,
    )
    assert error["code"] == "no_ready_instance"
    # /v1/models still lists the model, not ready
    models = httpx.get(f"{bare_node.api_url}/models", timeout=10).json()["data"]
    assert next(m for m in models if m["id"] == MODEL)["ready"] is False

    # create one through the instance API: 201, then it becomes ready and serves
    created = httpx.post(f"{bare_node.base_url}/instances", json={"model": MODEL}, timeout=30)
    assert created.status_code == 201, created.text
    instance = created.json()
    instance_id = instance["instance_id"]
    assert instance["model_id"] == MODEL
    listed = httpx.get(f"{bare_node.base_url}/instances", timeout=10).json()["instances"]
    assert [i["instance_id"] for i in listed] == [instance_id]

    # while it imports and loads, requests get a 503 that says what it is doing (unless it is already ready)
    early = httpx.post(f"{bare_node.api_url}/chat/completions", json={"model": MODEL, "messages": QUESTION, "max_tokens": 1}, timeout=60)
    if early.status_code == 503:
        assert instance_id in early.json()["error"]["message"]
        assert "not ready" in early.json()["error"]["message"]
    else:
        assert early.status_code == 200, early.text

    health = bare_node.wait_ready(120)
    assert health["ready_instances"] == [instance_id]
    response = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=10)
    assert "Paris" in response.choices[0].message.content

    # instance API errors
    assert_openai_error(httpx.post(f"{bare_node.base_url}/instances", json={"model": "gpt-17"}, timeout=10), 404)
    assert_openai_error(httpx.post(f"{bare_node.base_url}/instances", content=b"{", timeout=10), 400)
    assert_openai_error(httpx.delete(f"{bare_node.base_url}/instances/inst-nope", timeout=10), 404)

    # deleting it brings back the 503
    deleted = httpx.delete(f"{bare_node.base_url}/instances/{instance_id}", timeout=30)
    assert deleted.status_code == 200, deleted.text
    bare_node.wait_until(lambda h: not h["ready_instances"], 30, "instance gone")
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=3)
    assert info.value.status_code == 503
    # and the runner process goes away
    deadline = time.monotonic() + 20
    while bare_node.runner_pids() and time.monotonic() < deadline:
        time.sleep(0.25)
    assert bare_node.runner_pids() == []


def test_an_empty_prompt_among_running_streams_is_400_for_it_alone(client: openai.OpenAI, http: httpx.Client) -> None:
    """It used to reach the runner's batch and abort every stream there with 'Sequence N has an empty prompt'."""
    outcomes: dict[int, dict] = {}
    flowing = threading.Barrier(4, timeout=120)

    def stream(i: int) -> None:
        outcome = outcomes.setdefault(i, {"text": "", "finish": None})
        try:
            chunks = client.completions.create(model=MODEL, prompt=f"Once upon a time, in village number {i},",
                                               max_tokens=60, temperature=0, stream=True)  # fmt: skip
            for chunk in chunks:
                outcome["text"] += chunk.choices[0].text
                if outcome["text"] and not outcome.get("waited"):
                    outcome["waited"] = True
                    flowing.wait()  # every stream runs before the empty prompt comes
                outcome["finish"] = chunk.choices[0].finish_reason or outcome["finish"]
        except BaseException as exc:  # noqa: BLE001 - inspected below
            outcome["error"] = exc

    threads = [threading.Thread(target=stream, args=(i,), daemon=True) for i in range(3)]
    for t in threads:
        t.start()
    flowing.wait()
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL, prompt="", max_tokens=3)
    assert info.value.status_code == 400 and "empty" in info.value.message
    streamed = http.post("/completions", json={"model": MODEL, "prompt": "", "max_tokens": 3, "stream": True})
    error = assert_openai_error(streamed, 400)  # before the stream: no 200 and then an error event
    assert error["param"] == "prompt"
    for t in threads:
        t.join(120)
    for i in range(3):
        assert "error" not in outcomes[i], outcomes[i]
        assert outcomes[i]["finish"] in ("length", "stop") and outcomes[i]["text"], outcomes[i]


# -- a node whose runner dies -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def dying_node(start_node: Callable[..., Node]) -> Iterator[Node]:
    n = start_node("runner-dies")
    yield n
    n.stop()


def test_requests_right_after_the_runner_died_get_503_at_once_with_a_short_reason(dying_node: Node) -> None:
    """A request in flight when its runner died used to wait out the gateway's 10 s submit timeout; and the
    reason carried the runner's last log lines (other clients' request ids and token counts)."""
    body = {"model": MODEL, "prompt": "Hi", "max_tokens": 2}
    served = httpx.post(f"{dying_node.api_url}/completions", json=body, timeout=60)
    assert served.status_code == 200, served.text  # the runner's log now holds a request id
    (runner,) = dying_node.runner_pids()
    in_flight: dict = {}

    def ask() -> None:
        in_flight["response"] = httpx.post(f"{dying_node.api_url}/completions", json=body, timeout=60)
        in_flight["answered_at"] = time.monotonic()

    os.kill(runner, signal.SIGSTOP)  # it cannot answer: the request waits for its reply, as if sent as it died
    thread = threading.Thread(target=ask, daemon=True)
    thread.start()
    time.sleep(1.0)
    os.kill(runner, signal.SIGKILL)
    killed_at = time.monotonic()
    thread.join(30)
    assert in_flight["response"].status_code == 503, in_flight["response"].text
    waited = in_flight["answered_at"] - killed_at
    print(f"the request in flight got its 503 {waited:.2f} s after the runner died")
    assert waited < 3.0, "the request waited for the submit timeout instead of the instance's state"

    answers = []
    until = time.monotonic() + 2.0
    with httpx.Client(timeout=30) as http:
        while time.monotonic() < until:
            started = time.monotonic()
            r = http.post(f"{dying_node.api_url}/completions", json=body)
            answers.append((r.status_code, round(time.monotonic() - started, 3), r.json()))
    print(f"{len(answers)} requests after: statuses {sorted({s for s, _, _ in answers})}, "
          f"slowest {max(t for _, t, _ in answers):.3f} s")  # fmt: skip
    assert all(status == 503 for status, _, _ in answers), answers[:3]
    assert max(t for _, t, _ in answers) < 2.0
    reasons = [in_flight["response"].json()["error"]["message"]] + [b["error"]["message"] for _, _, b in answers]
    for message in reasons:
        assert "request=" not in message and "cmpl-" not in message and "tokens=" not in message, message
    # Answers name the exit until the worker restarts the runner (after its 1 s backoff); from then they name the
    # restart's loading (seen in CI), never anything else.
    assert any("exited with code -9" in m for m in reasons), sorted(set(reasons))
    assert all("exited with code -9" in m or "loading" in m for m in reasons), sorted(set(reasons))


async def test_the_runner_is_a_micro_service_that_counts_its_errors(node: Node) -> None:
    """Its generate and cancel endpoints are listed by $SRV.INFO; a request its handler cannot read is answered
    with micro's error headers and counted in $SRV.STATS (the gateway never sends one)."""
    (instance_id,) = node.health()["ready_instances"]
    nc = await nats.connect(node.nats_url_as("gateway"))  # as a gateway: it may ask runners
    try:
        infos = [i for i in await micro_replies(nc, f"$SRV.INFO.{subjects.SERVICE_RUNNER}")
                 if instance_id in i["description"]]  # fmt: skip
        assert len(infos) == 1, infos
        endpoints = {e["name"]: e for e in infos[0]["endpoints"]}
        assert endpoints[subjects.RUNNER_GENERATE]["subject"] == subjects.runner_generate(instance_id)
        assert endpoints[subjects.RUNNER_GENERATE]["queue_group"] == subjects.RUNNER_QUEUE
        assert endpoints[subjects.RUNNER_CANCEL]["subject"] == subjects.runner_cancel(instance_id)

        async def errors() -> int:
            (stats,) = [s for s in await micro_replies(nc, f"$SRV.STATS.{subjects.SERVICE_RUNNER}")
                        if s["id"] == infos[0]["id"]]  # fmt: skip
            return next(e for e in stats["endpoints"] if e["name"] == subjects.RUNNER_GENERATE)["num_errors"]

        before = await errors()
        reply = await nc.request(subjects.runner_generate(instance_id), b"{not a request", timeout=10)
        assert reply.headers is not None
        assert reply.headers["Nats-Service-Error-Code"] == "400"
        assert "unreadable request" in reply.headers["Nats-Service-Error"]
        assert await errors() == before + 1
    finally:
        await nc.close()
