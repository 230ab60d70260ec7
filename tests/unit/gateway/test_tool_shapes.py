"""Tools of the Anthropic and Responses APIs in Chat Completions' shape and back (pure; not wired yet)."""

from __future__ import annotations

import pytest

from services.gateway.adapters import tool_shapes as ts

SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
CALL = {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}


def test_anthropic_tools_and_choice_in_openai_shape():
    assert ts.anthropic_tools([{"name": "weather", "description": "d", "input_schema": SCHEMA}]) == [
        {"type": "function", "function": {"name": "weather", "description": "d", "parameters": SCHEMA}}]
    assert ts.anthropic_tool_choice({"type": "any"}) == "required"
    assert ts.anthropic_tool_choice({"type": "tool", "name": "weather"}) == {"type": "function", "function": {"name": "weather"}}
    assert ts.anthropic_tool_choice(None) is None


def test_anthropic_tool_use_and_tool_result_turns_round_trip():
    use = ts.anthropic_turn("assistant", [{"type": "text", "text": "Let me see."},
                                          {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Paris"}}])  # fmt: skip
    assert use == [{"role": "assistant", "content": "Let me see.", "tool_calls": [CALL]}]
    result = ts.anthropic_turn("user", [{"type": "tool_result", "tool_use_id": "call_1",
                                         "content": [{"type": "text", "text": "sunny"}]}])  # fmt: skip
    assert result == [{"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]
    assert ts.anthropic_content("", [CALL]) == [{"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Paris"}}]


def test_responses_function_tools_items_and_output():
    tool = {"type": "function", "name": "weather", "parameters": SCHEMA, "strict": True}
    assert ts.responses_tools([tool]) == [{"type": "function", "function": {"name": "weather", "parameters": SCHEMA, "strict": True}}]
    with pytest.raises(ValueError, match="web_search"):
        ts.responses_tools([{"type": "web_search"}])
    items = [{"type": "function_call", "call_id": "call_1", "name": "weather", "arguments": '{"city": "Paris"}'},
             {"type": "function_call_output", "call_id": "call_1", "output": "sunny"}]  # fmt: skip
    assert ts.responses_items(items) == [{"role": "assistant", "content": None, "tool_calls": [CALL]},
                                         {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]  # fmt: skip
    assert ts.responses_output([CALL])[0] | {"id": ""} == {"type": "function_call", "id": "", "call_id": "call_1",
        "name": "weather", "arguments": '{"city": "Paris"}', "status": "completed"}  # fmt: skip
