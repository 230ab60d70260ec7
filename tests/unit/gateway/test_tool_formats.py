"""Calls in a model's own tool-call syntax are read back under `auto` (services/gateway/tool_formats.py, through
tool_calls.parse_auto), and none of that syntax stays in the content, streamed or whole."""

from __future__ import annotations

import json

import pytest

from services.gateway.generation_params import ChatPlan
from services.gateway.tool_calls import ToolChatShape, parse_auto, streamable
from services.gateway.tool_formats import native_calls, xml_call

NAMES = ("get_weather", "get_time")
PARIS = {"city": "Paris", "days": 3}

NATIVE = {
    "llama3_json": [
        '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris", "days": 3}}',
        '{"name": "get_weather", "parameters": {"city": "Paris", "days": 3}}',
    ],
    "mistral": [
        '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}]',
        '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris", "days": 3}',
    ],
    "deepseek_v3": [
        '<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{"city": "Paris", "days": 3}\n'
        "```<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
        '<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{"city": "Paris", "days": 3}<｜tool▁call▁end｜>'
        "<｜tool▁calls▁end｜>",
    ],
    "pythonic": ['[get_weather(city="Paris", days=3)]', '<|tool_call_start|>[get_weather(city="Paris", days=3)]<|tool_call_end|>'],
    "qwen3_coder": ["<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n<parameter=days>\n3\n"
                    "</parameter>\n</function>\n</tool_call>"],
}


@pytest.mark.parametrize("fmt, text", [(f, t) for f, texts in NATIVE.items() for t in texts])
def test_a_call_in_the_models_own_syntax_is_a_call_and_leaves_no_syntax(fmt: str, text: str) -> None:
    content, calls = parse_auto(text, NAMES, fmt)
    assert content is None
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == [("get_weather", PARIS)]


def test_text_before_a_marked_call_stays_as_content_and_streams_up_to_the_marker() -> None:
    text = 'Let me look.\n[TOOL_CALLS] [{"name": "get_time", "arguments": {}}]'
    content, calls = parse_auto(text, NAMES, "mistral")
    assert content == "Let me look." and calls[0]["function"]["name"] == "get_time"
    assert text[: streamable(text, "mistral")] == "Let me look."
    assert streamable("Let me look. [TOOL_", "mistral") == len("Let me look.")  # a marker's start is held
    assert streamable("Let me look.", "mistral") == len("Let me look.")


def test_whole_answer_formats_hold_an_answer_that_opens_like_a_call_and_stream_prose() -> None:
    assert streamable('{"name": "get_ti', "llama3_json") == 0
    assert streamable("[get_weather(city=", "pythonic") == 0
    assert streamable("The weather is fine", "pythonic") == len("The weather is fine")
    prose = "[1] is a citation, not a call."
    assert parse_auto(prose, NAMES, "pythonic") == (prose, [])


def test_several_calls_and_unknown_names() -> None:
    text = '[get_weather(city="Paris"), get_time(zone="UTC"), launch(missiles=True)]'
    _content, calls = parse_auto(text, NAMES, "pythonic")
    assert [c["function"]["name"] for c in calls] == ["get_weather", "get_time"]
    two = '{"name": "get_weather", "parameters": {"city": "Oslo"}}; {"name": "get_time", "parameters": {}}'
    assert [name for name, _ in native_calls("llama3_json", two)[1]] == ["get_weather", "get_time"]


def test_broken_native_syntax_is_taken_out_of_the_content_and_gives_no_call() -> None:
    content, calls = parse_auto('Sure. [TOOL_CALLS] [{"name": "get_wea', NAMES, "mistral")
    assert (content, calls) == ("Sure.", [])
    content, calls = parse_auto("ok <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather", NAMES, "deepseek_v3")
    assert content == "ok" and calls == []


def test_non_literal_python_is_not_a_call() -> None:
    for text in ["[get_weather(city=open('/etc/passwd').read())]", "[get_weather('Paris')]", "[(lambda: 1)()]", "[" * 500]:
        assert parse_auto(text, NAMES, "pythonic")[1] == []


def test_a_format_without_its_own_reader_reads_the_prompted_syntax_only() -> None:
    prompted = '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>'
    for fmt in ("hermes", "none", "other"):
        assert parse_auto(prompted, NAMES, fmt)[1][0]["function"]["name"] == "get_time"
    assert parse_auto('{"name": "get_time", "parameters": {}}', NAMES, "hermes")[1] == []


def test_xml_values_are_json_where_they_parse() -> None:
    assert xml_call("<function=f><parameter=a>\n[1, 2]\n</parameter><parameter=b>two words</parameter></function>") == (
        "f", {"a": [1, 2], "b": "two words"})  # fmt: skip
    assert xml_call("no function here") is None


def test_the_chat_stream_of_a_native_call_has_no_syntax_in_its_content() -> None:
    plan = ChatPlan(messages=(), json_schema=None, tool_mode="auto", tool_names=NAMES, tool_format="mistral")
    shape = ToolChatShape("id", "m", plan)
    text = 'Checking. [TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}]'
    chunks = [c for i in range(0, len(text), 5) for c in shape.pieces(text[i : i + 5], None)]
    chunks += shape.pieces("", "stop")
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert content == "Checking."
    (calls,) = [c["choices"][0]["delta"]["tool_calls"] for c in chunks if "tool_calls" in c["choices"][0]["delta"]]
    assert json.loads(calls[0]["function"]["arguments"]) == PARIS
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_the_routes_read_the_format_off_the_models_card() -> None:
    from services.gateway.routing import tool_format
    from shared.state import ClusterState

    state = ClusterState()
    assert [tool_format(state, m) for m in ("llama-3.3-70b", "mixtral-8x22b", "deepseek-r1", "smollm2-135m")] == [
        "llama3_json", "mistral", "deepseek_v3", "none"]  # fmt: skip
    assert tool_format(state, "no/such-model") == "none"  # routing answers for it with a 404
    plan = ChatPlan(messages=(), json_schema=None, tool_mode="auto", tool_names=NAMES).reading("pythonic")
    assert plan.tool_format == "pythonic" and plan.tool_names == NAMES
