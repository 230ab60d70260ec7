"""Tools and structured output through the official `openai` client on one real node with the real 135M model:
the grammar makes its forced calls and JSON answers parse and validate, streamed and not."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

from tests.conftest import MODEL, Node

pytestmark = pytest.mark.slow

WEATHER_PARAMS = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 20},
        "unit": {"enum": ["celsius", "fahrenheit"]},
        "days": {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": 7}, "maxItems": 3},
    },
    "required": ["city", "unit", "days"],
    "additionalProperties": False,
}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather forecast", "parameters": WEATHER_PARAMS}}]
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer", "minimum": 0, "maximum": 120},
                   "langs": {"type": "array", "items": {"type": "string", "maxLength": 10}, "maxItems": 3}},
    "required": ["name", "age", "langs"],
    "additionalProperties": False,
}  # fmt: skip


@pytest.fixture(scope="module")
def client(node: Node) -> openai.OpenAI:
    return openai.OpenAI(base_url=node.api_url, api_key="not-needed", timeout=120.0, max_retries=0)


def test_forced_tool_call_validates(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required", temperature=0.7, seed=3, max_tokens=80
    )
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.id.startswith("call_") and call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER_PARAMS)


def test_forced_tool_call_streams_deltas_that_validate(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, stream=True, max_tokens=80, temperature=0,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )  # fmt: skip
    names, ids, arguments, finish = [], set(), [], None
    for chunk in stream:
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for d in choice.delta.tool_calls or []:
                assert d.index == 0
                if d.id:
                    ids.add(d.id)
                if d.function and d.function.name:
                    names.append(d.function.name)
                if d.function and d.function.arguments:
                    arguments.append(d.function.arguments)
    assert names == ["get_weather"] and len(ids) == 1
    assert finish == "tool_calls"
    jsonschema.validate(json.loads("".join(arguments)), WEATHER_PARAMS)


def test_tool_result_round_trip(client: openai.OpenAI) -> None:
    history = ASK + [
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_abc", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius", "days": [1]}'}}]},
        {"role": "tool", "tool_call_id": "call_abc", "content": "Sunny, 24 degrees."},
    ]  # fmt: skip
    response = client.chat.completions.create(
        model=MODEL, messages=history, tools=TOOLS, tool_choice="none", temperature=0, max_tokens=30
    )
    choice = response.choices[0]
    assert choice.finish_reason in ("stop", "length")
    assert choice.message.tool_calls is None
    assert choice.message.content and "<tool_call>" not in choice.message.content
    without_result = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, tool_choice="none", max_tokens=1)
    assert response.usage and without_result.usage
    assert response.usage.prompt_tokens > without_result.usage.prompt_tokens + 20  # the call and its result were in


def test_json_schema_strict_output_validates(client: openai.OpenAI) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    ask = [{"role": "user", "content": "Invent a person."}]
    response = client.chat.completions.create(model=MODEL, messages=ask, response_format=fmt, temperature=0, max_tokens=80)
    assert response.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(response.choices[0].message.content or ""), PERSON)


def test_json_object_output_parses(client: openai.OpenAI) -> None:
    ask = [{"role": "user", "content": "Give a JSON object with your name."}]
    response = client.chat.completions.create(
        model=MODEL, messages=ask, response_format={"type": "json_object"}, temperature=0, max_tokens=60
    )
    if response.choices[0].finish_reason == "stop":  # an object can run past max_tokens; what came must be JSON
        assert isinstance(json.loads(response.choices[0].message.content or ""), dict)
    else:
        assert (response.choices[0].message.content or "").startswith("{")


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": [{"type": "function", "function": {"parameters": {}}}]}, "tools[0].function.name"),
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "frob"}}}]}, "tools[0].function.parameters"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "frob"}}}}, "response_format.json_schema.schema"),
    ],
)  # fmt: skip
def test_bad_input_is_a_400_naming_the_field(client: openai.OpenAI, fields: dict, param: str) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=5, **fields)
    assert err.value.status_code == 400
    assert err.value.body["param"] == param  # type: ignore[index]
