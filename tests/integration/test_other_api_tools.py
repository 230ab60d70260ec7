"""Tools through Anthropic Messages, OpenAI Responses and Ollama, with their official clients unchanged, on one real
node with the real 135M model: forced calls whose arguments validate, streamed and not, and a tool result round trip."""

from __future__ import annotations

import json

import anthropic
import jsonschema
import ollama
import openai
import pytest

from tests.conftest import MODEL, Node
from tests.integration.test_openai_tools import WEATHER_PARAMS

pytestmark = pytest.mark.slow

ASK = "What is the weather in Paris?"
CLAUDE_TOOLS = [{"name": "get_weather", "description": "Weather forecast", "input_schema": WEATHER_PARAMS}]
RESPONSES_TOOLS = [{"type": "function", "name": "get_weather", "description": "Weather forecast",
                    "parameters": WEATHER_PARAMS, "strict": True}]  # fmt: skip
FORCED = {"type": "tool", "name": "get_weather"}


@pytest.fixture(scope="module")
def claude(node: Node) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=node.base_url, api_key="not-needed", timeout=120.0, max_retries=0)


@pytest.fixture(scope="module")
def oai(node: Node) -> openai.OpenAI:
    return openai.OpenAI(base_url=node.api_url, api_key="not-needed", timeout=120.0, max_retries=0)


def test_anthropic_forced_tool_use_validates_and_streams_the_same(claude: anthropic.Anthropic) -> None:
    ask = dict(model=MODEL, max_tokens=80, tools=CLAUDE_TOOLS, tool_choice=FORCED,
               messages=[{"role": "user", "content": ASK}], extra_body={"temperature": 0})  # fmt: skip
    m = claude.messages.create(**ask)  # type: ignore[call-overload]
    assert m.stop_reason == "tool_use"
    (block,) = m.content
    assert block.type == "tool_use" and block.name == "get_weather"
    jsonschema.validate(block.input, WEATHER_PARAMS)
    with claude.messages.stream(**ask) as stream:  # type: ignore[arg-type]
        events = list(stream)
        final = stream.get_final_message()
    kinds = [event.type for event in events]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    pieces = [e.delta.partial_json for e in events if e.type == "content_block_delta" and e.delta.type == "input_json_delta"]
    assert len(pieces) > 1  # streamed as generated, not sent whole at the end
    jsonschema.validate(json.loads("".join(pieces)), WEATHER_PARAMS)
    assert final.stop_reason == "tool_use" and json.loads("".join(pieces)) == final.content[0].input  # type: ignore[union-attr]
    assert [(b.type, b.input) for b in final.content] == [("tool_use", block.input)]  # type: ignore[union-attr]


def test_anthropic_tool_result_round_trip(claude: anthropic.Anthropic) -> None:
    call = {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
            "input": {"city": "Paris", "unit": "celsius", "days": [1]}}  # fmt: skip
    result = {"type": "tool_result", "tool_use_id": "toolu_1", "content": "Sunny, 24 degrees."}
    history = [{"role": "user", "content": ASK}, {"role": "assistant", "content": [call]},
               {"role": "user", "content": [result]}]  # fmt: skip
    ask = dict(model=MODEL, max_tokens=30, tools=CLAUDE_TOOLS, tool_choice={"type": "none"}, messages=history,
               extra_body={"temperature": 0})  # fmt: skip
    m = claude.messages.create(**ask)  # type: ignore[call-overload]
    assert m.stop_reason in ("end_turn", "max_tokens")
    assert [b.type for b in m.content] == ["text"] and "<tool_call>" not in m.content[0].text  # type: ignore[union-attr]
    with claude.messages.stream(**ask) as stream:  # type: ignore[arg-type]
        pieces = [e.delta.text for e in stream if e.type == "content_block_delta" and e.delta.type == "text_delta"]
    assert len(pieces) > 1 and "".join(pieces) == m.content[0].text  # type: ignore[union-attr]  # with tools, text still streams
    alone = claude.messages.count_tokens(model=MODEL, messages=[{"role": "user", "content": ASK}], tools=CLAUDE_TOOLS,  # type: ignore[arg-type]
                                         tool_choice={"type": "none"})  # fmt: skip
    assert m.usage.input_tokens > alone.input_tokens + 20  # the call and its result were in the prompt


def test_anthropic_bad_tool_is_400_naming_it(claude: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as info:
        claude.messages.create(model=MODEL, max_tokens=5, tools=CLAUDE_TOOLS, messages=[{"role": "user", "content": ASK}],
                               tool_choice={"type": "tool", "name": "nope"})  # fmt: skip
    assert "nope" in str(info.value)


def test_responses_forced_function_call_validates_streamed_and_not(oai: openai.OpenAI) -> None:
    ask = dict(model=MODEL, input=ASK, tools=RESPONSES_TOOLS, tool_choice={"type": "function", "name": "get_weather"},
               max_output_tokens=80, temperature=0)  # fmt: skip
    r = oai.responses.create(**ask)  # type: ignore[call-overload]
    (item,) = r.output
    assert item.type == "function_call" and item.name == "get_weather" and item.call_id
    jsonschema.validate(json.loads(item.arguments), WEATHER_PARAMS)
    events = list(oai.responses.create(stream=True, **ask))  # type: ignore[call-overload]
    pieces = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
    assert len(pieces) > 1 and "".join(pieces) == item.arguments  # streamed as generated, the same call
    jsonschema.validate(json.loads("".join(pieces)), WEATHER_PARAMS)
    (streamed,) = events[-1].response.output
    assert events[-1].type == "response.completed" and (streamed.name, streamed.arguments) == ("get_weather", item.arguments)
    assert [e.type for e in events if "output_item" in e.type] == ["response.output_item.added", "response.output_item.done"]
    round_trip = oai.responses.create(model=MODEL, tools=RESPONSES_TOOLS, tool_choice="none", max_output_tokens=20,  # type: ignore[arg-type]
                                      temperature=0, input=[{"role": "user", "content": ASK}, item.model_dump(),
                                      {"type": "function_call_output", "call_id": item.call_id, "output": "Sunny."}])  # fmt: skip
    assert round_trip.output_text and "<tool_call>" not in round_trip.output_text


# --- Ollama: no tool_choice, so a call cannot be forced; `format` (a JSON schema) can force the output ---


@pytest.fixture(scope="module")
def olla(node: Node) -> ollama.Client:
    return ollama.Client(host=node.base_url, timeout=120.0)


def test_ollama_format_schema_validates_streamed_and_not(olla: ollama.Client) -> None:
    ask = dict(model=MODEL, messages=[{"role": "user", "content": ASK}], format=WEATHER_PARAMS,
               options={"temperature": 0, "num_predict": 80})  # fmt: skip
    r = olla.chat(**ask)  # type: ignore[arg-type]
    assert r.done_reason == "stop"
    jsonschema.validate(json.loads(r.message.content or ""), WEATHER_PARAMS)
    streamed = "".join(p.message.content or "" for p in olla.chat(stream=True, **ask))  # type: ignore[arg-type]
    assert streamed == r.message.content


def test_ollama_tools_answer_in_ollamas_shape_and_take_tool_turns(olla: ollama.Client) -> None:
    """Seeded, so the answer is the same each run; whatever the model does, a call is Ollama's shape (arguments
    an object) and validates, and tool syntax never stays in the content."""
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather forecast",
                                               "parameters": WEATHER_PARAMS}}]  # fmt: skip
    ask = dict(model=MODEL, messages=[{"role": "user", "content": ASK}], tools=tools,
               options={"temperature": 0.7, "seed": 5, "num_predict": 60})  # fmt: skip
    r = olla.chat(**ask)  # type: ignore[arg-type]
    streamed = list(olla.chat(stream=True, **ask))  # type: ignore[arg-type]
    for message in (r.message, *(p.message for p in streamed)):
        assert "<tool_call>" not in (message.content or "")
        for call in message.tool_calls or []:
            assert call.function.name == "get_weather"
            jsonschema.validate(dict(call.function.arguments), WEATHER_PARAMS)
    assert [c.function for c in r.message.tool_calls or []] == [c.function for p in streamed for c in p.message.tool_calls or []]
    call = {"function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius", "days": [1]}}}
    history = [{"role": "user", "content": ASK}, {"role": "assistant", "content": "", "tool_calls": [call]},
               {"role": "tool", "content": "Sunny, 24 degrees.", "tool_name": "get_weather"}]  # fmt: skip
    after = olla.chat(model=MODEL, messages=history, options={"temperature": 0, "num_predict": 20})  # type: ignore[arg-type]
    alone = olla.chat(model=MODEL, messages=history[:1], options={"temperature": 0, "num_predict": 1})
    assert after.message.content and (after.prompt_eval_count or 0) > (alone.prompt_eval_count or 0) + 20
