"""The pure parts of tools and structured output: a request -> its grammar and prompt; text -> tool calls;
a forced call's text -> OpenAI's streamed tool call deltas."""

from __future__ import annotations

import json

import msgspec
import pytest

from services.gateway.errors import OpenAIError
from services.gateway.generation_params import call_schema, plan_chat
from services.gateway.openai_schema import ChatCompletionRequest
from services.gateway.tool_calls import ToolChatShape, parse_auto, parse_forced, streamable

WEATHER = {"type": "function", "function": {"name": "weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}  # fmt: skip
USER = [{"role": "user", "content": "Weather in Paris?"}]


def request(**fields: object) -> ChatCompletionRequest:
    return msgspec.convert({"model": "m", "messages": USER} | fields, ChatCompletionRequest)


def rejected(param: str, **fields: object) -> None:
    with pytest.raises(OpenAIError) as err:
        plan_chat(request(**fields))
    assert err.value.body()["error"]["param"] == param


def test_plain_request_has_no_grammar_and_no_tools() -> None:
    plan = plan_chat(request())
    assert (plan.json_schema, plan.tool_mode) == (None, "none")
    assert [m.role for m in plan.messages] == ["user"]


def test_response_formats_become_schemas() -> None:
    assert json.loads(plan_chat(request(response_format={"type": "json_object"})).json_schema or "") == {"type": "object"}
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}}
    assert json.loads(plan_chat(request(response_format=fmt)).json_schema or "") == schema


def test_forced_tool_choice_becomes_the_call_schema_and_tools_are_described() -> None:
    plan = plan_chat(request(tools=[WEATHER], tool_choice="required"))
    assert plan.tool_mode == "forced"
    assert json.loads(plan.json_schema or "") == call_schema({"weather": WEATHER["function"]["parameters"]})  # type: ignore[index]
    assert plan.messages[0].role == "system" and "<tool_call>" in plan.messages[0].content
    named = plan_chat(request(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "weather"}}))
    assert named.tool_mode == "forced"
    assert plan_chat(request(tools=[WEATHER])).tool_mode == "auto"
    assert plan_chat(request(tools=[WEATHER], tool_choice="none")).json_schema is None


def test_history_with_tool_calls_and_results_is_rendered() -> None:
    history = USER + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]  # fmt: skip
    plan = plan_chat(request(messages=history, tools=[WEATHER]))
    assert plan.messages[2].content == '<tool_call>{"name": "weather", "arguments": {"city": "Paris"}}</tool_call>'
    assert (plan.messages[3].role, plan.messages[3].content) == ("tool", "sunny")


def test_bad_inputs_name_their_field() -> None:
    rejected("tools[0].function.name", tools=[{"type": "function", "function": {"parameters": {}}}])
    rejected("tool_choice", tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "nope"}})
    rejected("tools[0].function.parameters", tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "frob"}}}])
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "frob"}}}
    rejected("response_format.json_schema.schema", response_format=fmt)


def test_auto_output_is_parsed_and_tool_syntax_never_stays_in_content() -> None:
    text = 'Sure. <tool_call>{"name": "weather", "arguments": {"city": "Oslo"}}</tool_call>'
    content, calls = parse_auto(text, ("weather",))
    assert content == "Sure."
    assert calls[0]["function"] == {"name": "weather", "arguments": '{"city": "Oslo"}'}
    assert calls[0]["id"].startswith("call_")
    assert parse_auto("no calls here", ("weather",)) == ("no calls here", [])
    assert parse_auto("x <tool_call>{broken", ("weather",)) == ("x", [])
    assert parse_forced('{"name": "weather", "arguments": {"city": "Rome"}}')[0]["function"]["arguments"] == '{"city": "Rome"}'


def test_forced_call_streams_name_once_then_arguments_in_pieces() -> None:
    plan = plan_chat(request(tools=[WEATHER], tool_choice="required"))
    shape = ToolChatShape("chatcmpl-1", "m", plan)
    text = '{"name": "weather", "arguments": {"city": "Rome"}}'
    chunks = [c for i in range(0, len(text), 7) for c in shape.pieces(text[i : i + 7], None)] + shape.pieces("", "stop")
    calls = [d for c in chunks for d in c["choices"][0]["delta"].get("tool_calls", [])]
    assert [c["function"]["name"] for c in calls if "name" in c["function"]] == ["weather"]
    assert calls[0]["id"].startswith("call_") and all(c["index"] == 0 for c in calls)
    assert "".join(c["function"]["arguments"] for c in calls) == '{"city": "Rome"}'
    assert len(calls) > 2
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_a_malformed_tool_choice_is_a_400_not_a_crash() -> None:
    rejected("tool_choice", tools=[WEATHER], tool_choice={"type": "function", "function": "weather"})
    rejected("tool_choice", tools=[WEATHER], tool_choice="sometimes")


def test_auto_text_streams_up_to_a_call_and_adds_up_to_the_whole_content() -> None:
    assert [streamable(t) for t in ("Hi there", "Hi <tool", "Hi <tool_call>{", "  ", "a < b", "Hi\n")] == [8, 2, 2, 0, 5, 2]
    call = '<tool_call>{"name": "weather", "arguments": {"city": "Oslo"}}</tool_call>'
    for tool_choice in ("auto", "none"):
        plan = plan_chat(request(tools=[WEATHER], tool_choice=tool_choice))
        for text in ("Plain text, a < b. ", f"Let me look. {call}", f"Before {call} after", f"  Lead {call}", call):
            shape = ToolChatShape("chatcmpl-1", "m", plan)
            early = [c for i in range(0, len(text), 4) for c in shape.pieces(text[i : i + 4], None)]
            chunks = early + shape.pieces("", "stop")
            streamed = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
            whole = ToolChatShape("chatcmpl-1", "m", plan).whole(text, "stop", {})["choices"][0]["message"]
            lead = "  " if text.startswith(" ") else ""  # sent before the call shows; the whole answer strips it
            assert streamed == lead + (whole["content"] or ""), (tool_choice, text, streamed)
            assert bool(early) == (not text.startswith("<")), text  # text before a call is not held to the end
            calls = [d for c in chunks for d in c["choices"][0]["delta"].get("tool_calls", [])]
            assert [d["function"]["name"] for d in calls] == [d["function"]["name"] for d in whole.get("tool_calls", [])]


def test_a_template_with_its_own_tool_format_gets_the_tools_and_the_history_as_fields() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}
    history = USER + [{"role": "assistant", "content": None, "tool_calls": [call]},
                      {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]  # fmt: skip
    plan = plan_chat(request(messages=history, tools=[WEATHER]))
    # The fallback: our system message and the calls written in <tool_call> syntax, no tools for the template.
    fallback = plan.reading("none")
    assert fallback.tools is None and fallback.messages[0].role == "system" and "weather" in fallback.messages[0].content
    assert "<tool_call>" in fallback.messages[2].content and fallback.tool_format == "none"
    for fmt in ("hermes", "llama3_json", "mistral"):
        native = plan.reading(fmt)
        assert native.tool_format == fmt and [m.role for m in native.messages] == ["user", "assistant", "tool"]
        assert json.loads(native.tools or "") == [{"type": "function", "function": {
            "name": "weather", "description": "", "parameters": WEATHER["function"]["parameters"]}}]  # fmt: skip
        (written,) = json.loads(native.messages[1].tool_calls or "")
        assert written == {"type": "function", "id": "call_1", "function": {"name": "weather", "arguments": {"city": "Paris"}}}
        assert native.messages[2].tool_call_id == "call_1" and native.messages[2].content == "sunny"
    assert plan.reading("other").tools is None  # a template format we cannot read back keeps our fallback
    # No tools (or tool_choice none): nothing for the template, whatever the format.
    assert plan_chat(request()).reading("hermes").tools is None
    assert plan_chat(request(tools=[WEATHER], tool_choice="none")).reading("hermes").tools is None
