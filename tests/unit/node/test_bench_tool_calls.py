"""The tool-calling benchmark's pure parts (bench/tool_calls.py): its scenarios, the requests, the scoring."""

from __future__ import annotations

import json

from bench.tool_calls import load, request_body, score, streamed_message


def call(name: str, arguments: dict | str) -> dict:
    text = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return {"id": "c", "type": "function", "function": {"name": name, "arguments": text}}


def test_at_least_13_scenarios_each_with_known_tools():
    tools, scenarios = load()
    assert len(scenarios) >= 13 and len({s["name"] for s in scenarios}) == len(scenarios)
    for s in scenarios:
        body = request_body("m", tools, s)
        assert {t["function"]["name"] for t in body["tools"]} <= set(tools)
        assert s["expect"] in ("call", "text") and (s["expect"] == "text" or s["function"] in tools)


def test_a_call_passes_only_when_its_arguments_validate():
    tools, scenarios = load()
    weather = next(s for s in scenarios if s["name"] == "weather")
    good = {"content": None, "tool_calls": [call("get_weather", {"city": "Lisbon", "unit": "celsius"})]}
    assert score(tools, weather, good) == (True, True, "")
    assert score(tools, weather, {"tool_calls": [call("get_weather", {"city": "Lisbon"})]})[0] is False
    assert score(tools, weather, {"tool_calls": [call("get_weather", "{not json")]})[0] is False
    assert score(tools, weather, {"tool_calls": [call("nope", {})]})[:2] == (False, False)
    assert score(tools, weather, {"content": "hi", "tool_calls": []})[0] is False
    right_shape_wrong_tool = {"tool_calls": [call("list_files", {"pattern": "*.md"})]}
    assert score(tools, weather, right_shape_wrong_tool) == (True, False, "")


def test_text_passes_without_calls_or_tool_syntax():
    tools, scenarios = load()
    poem = next(s for s in scenarios if s["expect"] == "text")
    assert score(tools, poem, {"content": "Waves.", "tool_calls": None})[0] is True
    assert score(tools, poem, {"content": '<tool_call>{"name": "x"}</tool_call>'})[0] is False


def test_a_stream_adds_up_to_its_message():
    chunks = [{"choices": [{"delta": {"tool_calls": [{"index": 0, "id": "c", "function": {"name": "f", "arguments": ""}}]}}]},
              {"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"a": '}}]}}]},
              {"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}}]}]  # fmt: skip
    message = streamed_message([f"data: {json.dumps(c)}" for c in chunks] + ["data: [DONE]"])
    assert message["tool_calls"] == [{"function": {"name": "f", "arguments": '{"a": 1}'}}]
