"""The gateway's request schema (services/gateway/openai_schema.py) and instance choice (routing.py)."""

from __future__ import annotations

import json

import pytest

from services.gateway.errors import OpenAIError
from services.gateway.routing import pick_instance
from services.gateway.openai_schema import (
    ChatCompletionRequest,
    CompletionRequest,
    InMessage,
    SamplingFields,
    TextPart,
    decode_body,
)
from shared.apply import apply
from shared.events import Instance, InstancePlaced, RunnerStatusChanged, ShardAssignment
from shared.generation import ChatMessage, SamplingParams, Speculation
from shared.state import ClusterState

CONTEXT = 8192


def fields(**kw) -> SamplingFields:
    return SamplingFields(model="smollm2-135m", **kw)


def assert_400(exc_info: pytest.ExceptionInfo, param: str | None) -> OpenAIError:
    err = exc_info.value
    assert isinstance(err, OpenAIError)
    assert err.status == 400
    assert err.param == param
    assert err.type == "invalid_request_error"
    body = err.body()["error"]
    assert body["param"] == param and body["message"] == err.message
    return err


# --- SamplingFields.sampling --------------------------------------------------------------------


def test_defaults():
    assert fields().sampling(CONTEXT) == SamplingParams(max_tokens=None, temperature=1.0, top_p=1.0, stop=(), seed=None)


def test_values_carried_over():
    params = fields(max_tokens=10, temperature=0.0, top_p=0.5, stop=["a", "b"], seed=7).sampling(CONTEXT)
    assert params == SamplingParams(max_tokens=10, temperature=0.0, top_p=0.5, stop=("a", "b"), seed=7)


def test_max_completion_tokens_preferred_over_max_tokens():
    assert fields(max_tokens=100, max_completion_tokens=5).sampling(CONTEXT).max_tokens == 5
    assert fields(max_tokens=100).sampling(CONTEXT).max_tokens == 100


@pytest.mark.parametrize("value", [0, -1])
@pytest.mark.parametrize("name", ["max_tokens", "max_completion_tokens"])
def test_max_tokens_below_one(name, value):
    with pytest.raises(OpenAIError) as info:
        fields(**{name: value}).sampling(CONTEXT)
    assert_400(info, "max_tokens")


def test_max_tokens_equal_to_context_allowed():
    assert fields(max_tokens=CONTEXT).sampling(CONTEXT).max_tokens == CONTEXT


def test_max_tokens_over_context():
    with pytest.raises(OpenAIError) as info:
        fields(max_tokens=CONTEXT + 1).sampling(CONTEXT)
    err = assert_400(info, "max_tokens")
    assert err.code == "context_length_exceeded"
    assert str(CONTEXT) in err.message and str(CONTEXT + 1) in err.message


@pytest.mark.parametrize("value", [0.0, 1.0, 2.0])
def test_temperature_in_range(value):
    assert fields(temperature=value).sampling(CONTEXT).temperature == value


@pytest.mark.parametrize("value", [-0.1, 2.01, 100.0])
def test_temperature_out_of_range(value):
    with pytest.raises(OpenAIError) as info:
        fields(temperature=value).sampling(CONTEXT)
    assert_400(info, "temperature")


@pytest.mark.parametrize("value", [0.01, 0.5, 1.0])
def test_top_p_in_range(value):
    assert fields(top_p=value).sampling(CONTEXT).top_p == value


@pytest.mark.parametrize("value", [0.0, -0.5, 1.01])
def test_top_p_out_of_range(value):
    with pytest.raises(OpenAIError) as info:
        fields(top_p=value).sampling(CONTEXT)
    assert_400(info, "top_p")


@pytest.mark.parametrize("n", [0, -1, 9])
def test_n_out_of_range(n):
    with pytest.raises(OpenAIError) as info:
        fields(n=n).sampling(CONTEXT)
    assert_400(info, "n")


def test_stop_as_string():
    assert fields(stop="\n").sampling(CONTEXT).stop == ("\n",)


def test_stop_as_list():
    assert fields(stop=["x", "y", "z", "w"]).sampling(CONTEXT).stop == ("x", "y", "z", "w")


def test_stop_none_and_empty_list():
    assert fields(stop=None).sampling(CONTEXT).stop == ()
    assert fields(stop=[]).sampling(CONTEXT).stop == ()


def test_more_than_four_stops():
    with pytest.raises(OpenAIError) as info:
        fields(stop=["a", "b", "c", "d", "e"]).sampling(CONTEXT)
    assert_400(info, "stop")


def test_include_usage():
    req = decode_body(b'{"model": "m", "stream": true, "stream_options": {"include_usage": true}}', ChatCompletionRequest)
    assert req.include_usage
    assert not decode_body(b'{"model": "m"}', ChatCompletionRequest).include_usage


# --- decode_body --------------------------------------------------------------------------------


def test_decode_chat_body():
    body = {
        "model": "smollm2-135m",
        "messages": [
            {"role": "developer", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "Hello, "}, {"type": "text", "text": "world"}]},
        ],
        "max_tokens": 12,
        "stop": "\n",
    }
    req = decode_body(json.dumps(body).encode(), ChatCompletionRequest)
    assert isinstance(req, ChatCompletionRequest)
    assert [m.as_chat_message() for m in req.messages] == [
        ChatMessage("system", "be brief"),
        ChatMessage("user", "Hello, world"),
    ]
    assert req.sampling(CONTEXT).stop == ("\n",)


def test_decode_completion_body():
    req = decode_body(b'{"model": "m", "prompt": "Once upon a time"}', CompletionRequest)
    assert isinstance(req, CompletionRequest) and req.prompt == "Once upon a time"


@pytest.mark.parametrize("body", [b"", b"{", b"not json", b'{"model": "m",}', b"\xff\xfe"])
def test_decode_malformed_json(body):
    with pytest.raises(OpenAIError) as info:
        decode_body(body, ChatCompletionRequest)
    err = assert_400(info, None)
    assert "JSON" in err.message


@pytest.mark.parametrize(
    "body,where",
    [
        (b"[]", ""),
        (b'{"messages": []}', "model"),  # model missing
        (b'{"model": 3}', "model"),
        (b'{"model": "m", "max_tokens": "ten"}', "max_tokens"),
        (b'{"model": "m", "max_tokens": 1.5}', "max_tokens"),
        (b'{"model": "m", "temperature": "hot"}', "temperature"),
        (b'{"model": "m", "stop": 5}', "stop"),
        (b'{"model": "m", "stop": ["a", 1]}', "stop"),
        (b'{"model": "m", "stream": "yes"}', "stream"),
        (b'{"model": "m", "messages": "hi"}', "messages"),
        (b'{"model": "m", "messages": [{"role": "wizard", "content": "x"}]}', "role"),
        (b'{"model": "m", "messages": [{"content": "x"}]}', "role"),
        (b'{"model": "m", "messages": [{"role": "user", "content": 5}]}', "content"),
    ],
)
def test_decode_wrong_types(body, where):
    with pytest.raises(OpenAIError) as info:
        decode_body(body, ChatCompletionRequest)
    err = assert_400(info, info.value.param)  # type: ignore[attr-defined]
    assert "invalid request body" in err.message
    assert where in err.message and where in (err.param or "")


def test_known_fields_decode():
    body = b'{"model": "m", "user": "me", "logit_bias": {}, "frequency_penalty": 0, "logprobs": true, "n": 2}'
    req = decode_body(body, ChatCompletionRequest)
    assert req.model == "m" and req.n == 2


@pytest.mark.parametrize(
    "body,param",
    [
        (b'{"model": "m", "best_of": 2}', "best_of"),
        (b'{"model": "m", "functions": []}', "functions"),
        (b'{"model": "m", "modalities": ["audio"]}', "modalities"),
    ],
)
def test_unknown_fields_are_refused_by_name(body, param):
    with pytest.raises(OpenAIError) as info:
        decode_body(body, ChatCompletionRequest)
    assert_400(info, param)


# --- InMessage ----------------------------------------------------------------------------------


def test_content_list_of_text_parts_joined_and_non_text_skipped():
    msg = InMessage(
        role="user",
        content=[TextPart("text", "a"), TextPart("image_url"), TextPart("text", "b")],
    )
    assert msg.as_chat_message() == ChatMessage("user", "ab")


def test_content_none_is_empty():
    assert InMessage(role="assistant", content=None).as_chat_message() == ChatMessage("assistant", "")


@pytest.mark.parametrize("role,expected", [("developer", "system"), ("system", "system"), ("user", "user"), ("assistant", "assistant")])
def test_roles(role, expected):
    assert InMessage(role=role, content="x").as_chat_message().role == expected


# --- pick_instance ------------------------------------------------------------------------------


def instance(iid: str, model: str = "smollm2-135m", nodes=("node-a",)) -> Instance:
    per = 30 // len(nodes)
    return Instance(iid, model, "pipeline", "ring", tuple(ShardAssignment(n, r, r * per, (r + 1) * per) for r, n in enumerate(nodes)))


def state_of(*events) -> ClusterState:
    state = ClusterState()
    for e in events:
        state = apply(state, e)
    return state


def ready(iid: str, rank: int = 0, node: str = "node-a") -> RunnerStatusChanged:
    return RunnerStatusChanged(iid, node, rank, "ready")


def test_pick_single_ready_instance():
    state = state_of(InstancePlaced(instance("inst-1")), ready("inst-1"))
    assert {pick_instance(state, "smollm2-135m", turn) for turn in range(5)} == {"inst-1"}


def test_pick_round_robin_over_ready_only():
    state = state_of(
        InstancePlaced(instance("inst-b")),
        InstancePlaced(instance("inst-a")),
        InstancePlaced(instance("inst-c")),
        InstancePlaced(instance("inst-other", model="llama-3.3-70b")),
        ready("inst-b"),
        ready("inst-a"),
        ready("inst-other"),
        RunnerStatusChanged("inst-c", "node-a", 0, "loading"),
    )
    picks = [pick_instance(state, "smollm2-135m", turn) for turn in range(6)]
    assert picks == ["inst-a", "inst-b"] * 3


def test_pick_requires_every_rank_ready():
    state = state_of(InstancePlaced(instance("inst-1", nodes=("node-a", "node-b"))), ready("inst-1"))
    with pytest.raises(OpenAIError) as info:
        pick_instance(state, "smollm2-135m", 0)
    assert info.value.status == 503
    assert "rank 1 on node-b: waiting for its worker" in info.value.message


def test_pick_none_placed():
    state = state_of(InstancePlaced(instance("inst-x", model="llama-3.3-70b")), ready("inst-x"))
    with pytest.raises(OpenAIError) as info:
        pick_instance(state, "smollm2-135m", 0)
    err = info.value
    assert err.status == 503 and err.type == "service_unavailable"
    assert "no instance of smollm2-135m" in err.message and "placed" in err.message


def test_pick_not_ready_says_why():
    state = state_of(
        InstancePlaced(instance("inst-1", nodes=("node-a", "node-b"))),
        RunnerStatusChanged("inst-1", "node-a", 0, "importing", detail="", progress=0.4),
        RunnerStatusChanged("inst-1", "node-b", 1, "loading", detail="layers 15-30"),
    )
    with pytest.raises(OpenAIError) as info:
        pick_instance(state, "smollm2-135m", 0)
    err = info.value
    assert err.status == 503
    assert "inst-1" in err.message and "not ready" in err.message
    assert "rank 0 on node-a: importing 40%" in err.message
    assert "rank 1 on node-b: loading (layers 15-30)" in err.message


def test_pick_failed_runner_reported():
    state = state_of(
        InstancePlaced(instance("inst-1")),
        RunnerStatusChanged("inst-1", "node-a", 0, "failed", detail="out of memory"),
    )
    with pytest.raises(OpenAIError) as info:
        pick_instance(state, "smollm2-135m", 0)
    assert "rank 0 on node-a: failed (out of memory)" in info.value.message


def test_the_speculative_extension_field_becomes_the_requests_speculation() -> None:
    body = json.dumps({"model": "smollm2-135m", "messages": [], "speculative": {"draft": "ngram", "tokens": 6}})
    decoded = decode_body(body.encode(), ChatCompletionRequest)
    assert decoded.speculation() == Speculation("ngram", 6)
    assert fields().speculation() is None


@pytest.mark.parametrize(
    ("speculative", "param"),
    [({"draft": ""}, "speculative.draft"), ({"tokens": 0}, "speculative.tokens"), ({"tokens": 17}, "speculative.tokens")],
)
def test_bad_speculative_values_name_their_field(speculative: dict, param: str) -> None:
    body = json.dumps({"model": "smollm2-135m", "prompt": "x", "speculative": speculative})
    with pytest.raises(OpenAIError) as exc_info:
        decode_body(body.encode(), CompletionRequest).speculation()
    assert_400(exc_info, param)
