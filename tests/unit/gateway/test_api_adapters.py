"""The pure translations of the Anthropic, Responses and Ollama adapters, on plain data."""

from __future__ import annotations

import json

import msgspec
import pytest

from services.gateway.adapters import anthropic as an
from services.gateway.adapters import ollama as ol
from services.gateway.adapters import responses as rs
from services.gateway.adapters.error_shapes import error_body
from services.gateway.errors import OpenAIError, bad_request, model_not_found
from services.gateway.generation_params import ChatPlan
from services.gateway.tool_calls import AnswerPieces
from services.worker.runner.serve.stops import StopMatcher
from shared.generation import ChatMessage, FinishedRequest, TokenChunk


def last(reason: str = "stop", stop: str | None = None, tokens: int = 5) -> TokenChunk:
    finished = FinishedRequest(reason, None, 9, 0, tokens, 0.25, 1.0, 10.0, "pipeline", 1)  # type: ignore[arg-type]
    return TokenChunk("r", 3, "", tokens, 9, reason, finished=finished, stop_sequence=stop)  # type: ignore[arg-type]


def decode(type_: type, body: dict):  # noqa: ANN201
    return msgspec.convert(body, type_)


# --- Anthropic ---


def test_anthropic_system_blocks_and_content_blocks_become_chat_messages():
    body = decode(an.MessagesRequest, {
        "model": "m", "max_tokens": 7, "system": [{"type": "text", "text": "Be "}, {"type": "text", "text": "brief."}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}, {"role": "assistant", "content": "Yo"}],
        "stop_sequences": ["\n\n"], "temperature": 0.5, "top_p": 0.9,
    })  # fmt: skip
    fields, plan = an.translate(body)
    assert plan.messages == (ChatMessage("system", "Be brief."), ChatMessage("user", "Hi"), ChatMessage("assistant", "Yo"))
    sampling = fields.sampling(8192)
    assert (sampling.max_tokens, sampling.temperature, sampling.top_p, sampling.stop) == (7, 0.5, 0.9, ("\n\n",))


def test_anthropic_needs_max_tokens_but_count_tokens_does_not():
    body = decode(an.MessagesRequest, {"model": "m", "messages": [{"role": "user", "content": "Hi"}]})
    with pytest.raises(OpenAIError) as caught:
        an.translate(body)
    assert caught.value.status == 400 and caught.value.param == "max_tokens"
    assert an.translate(body, count_only=True)[1].messages == (ChatMessage("user", "Hi"),)


def test_anthropic_refuses_what_it_does_not_support_by_name():
    image = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "image"}]}]}
    with pytest.raises(OpenAIError, match="image") as caught:
        an.translate(decode(an.MessagesRequest, image))
    assert caught.value.param == "messages.0.content.0.type"
    bad_tools = [
        ([{"input_schema": {}}], {"type": "auto"}, "tools.0.name"),
        ([{"type": "web_search_20250305", "name": "w"}], None, "tools.0.type"),
        ([{"name": "f", "input_schema": {"type": "object", "properties": {"a": {"type": "nope"}}}}], None,
         "tools.0.input_schema"),
        ([{"name": "f", "input_schema": {}}], {"type": "tool", "name": "g"}, "tool_choice"),
        ([{"name": "f", "input_schema": {}}], {"type": "sometimes"}, "tool_choice"),
    ]  # fmt: skip
    for tools, choice, param in bad_tools:
        body = {"model": "m", "max_tokens": 5, "tools": tools, "tool_choice": choice,
                "messages": [{"role": "user", "content": "x"}]}  # fmt: skip
        with pytest.raises(OpenAIError) as caught:
            an.translate(decode(an.MessagesRequest, body))
        assert caught.value.param == param, (tools, choice)


WEATHER = {"name": "weather", "description": "d", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                                                                   "required": ["city"]}}  # fmt: skip


def test_anthropic_tools_and_a_tool_result_round_trip_plan_like_chat():
    body = decode(an.MessagesRequest, {
        "model": "m", "max_tokens": 30, "top_k": 4, "tools": [WEATHER], "tool_choice": {"type": "tool", "name": "weather"},
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "weather", "input": {"city": "Paris"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "sunny"}]},
        ],
    })  # fmt: skip
    fields, plan = an.translate(body)
    assert fields.sampling(8192).top_k == 4
    assert plan.tool_mode == "forced" and plan.tool_names == ("weather",) and plan.json_schema is not None
    roles = [m.role for m in plan.messages]
    assert roles == ["system", "user", "assistant", "tool"]
    assert '"city": "Paris"' in plan.messages[2].content and plan.messages[3].content == "sunny"


def test_anthropic_answers_tool_use_blocks():
    body = decode(an.MessagesRequest, {"model": "m", "max_tokens": 30, "tools": [WEATHER], "tool_choice": {"type": "any"},
                                        "messages": [{"role": "user", "content": "x"}]})  # fmt: skip
    _fields, plan = an.translate(body)
    whole = an.whole("msg_1", "m", plan, '{"name": "weather", "arguments": {"city": "Oslo"}}', last("stop"))
    assert whole["stop_reason"] == "tool_use"
    assert [(b["type"], b["name"], b["input"]) for b in whole["content"]] == [("tool_use", "weather", {"city": "Oslo"})]


def pieces_of(plan: ChatPlan, text: str, step: int = 5) -> list:
    """The answer's pieces as the adapters get them, the text generated `step` characters at a time."""
    reader = AnswerPieces(plan)
    return [p for i in range(0, len(text), step) for p in reader.feed(text[i : i + step], None)] + reader.feed("", "stop")


def test_anthropic_streams_a_forced_call_as_input_json_delta_pieces():
    body = decode(an.MessagesRequest, {"model": "m", "max_tokens": 30, "tools": [WEATHER], "tool_choice": {"type": "any"},
                                        "messages": [{"role": "user", "content": "x"}]})  # fmt: skip
    plan = an.translate(body)[1]
    pieces = pieces_of(plan, '{"name": "weather", "arguments": {"city": "Oslo"}}')
    blocks = an.Blocks(text_open=False)
    events = [e for p in pieces for e in blocks.events(p)] + an.closing_events(last("stop"), True, blocks.open)
    names = [n for n, _ in events]
    assert names[0] == "content_block_start" and names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(names[1:-3]) == {"content_block_delta"} and len(names[1:-3]) > 2
    start = events[0][1]["content_block"]
    assert (start["type"], start["name"], start["input"]) == ("tool_use", "weather", {}) and start["id"].startswith("call_")
    assert {e["delta"]["type"] for _, e in events[1:-3]} == {"input_json_delta"} and {e["index"] for _, e in events[:-2]} == {0}
    assert json.loads("".join(e["delta"]["partial_json"] for _, e in events[1:-3])) == {"city": "Oslo"}
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"


def test_anthropic_auto_text_then_a_call_are_two_blocks():
    body = decode(an.MessagesRequest, {"model": "m", "max_tokens": 30, "tools": [WEATHER],
                                        "messages": [{"role": "user", "content": "x"}]})  # fmt: skip
    plan = an.translate(body)[1]
    reader, blocks = AnswerPieces(plan), an.Blocks(text_open=False)
    text = 'Let me look. <tool_call>{"name": "weather", "arguments": {"city": "Oslo"}}</tool_call>'
    early = [e for i in range(0, len(text), 5) for p in reader.feed(text[i : i + 5], None) for e in blocks.events(p)]
    events = early + [e for p in reader.feed("", "stop") for e in blocks.events(p)]
    assert early[0] == ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
    assert len(early) > 2 and {n for n, _ in early[1:]} == {"content_block_delta"}  # the text streamed before the end
    assert "".join(e["delta"]["text"] for _, e in early[1:]) == "Let me look."
    assert [(n, e["index"]) for n, e in events[len(early) :]] == [
        ("content_block_stop", 0), ("content_block_start", 1), ("content_block_delta", 1),
    ]  # fmt: skip
    assert json.loads(events[-1][1]["delta"]["partial_json"]) == {"city": "Oslo"} and blocks.open == 1


def test_anthropic_stop_reasons():
    assert an.stop_reason(last("length")) == ("max_tokens", None)
    assert an.stop_reason(last("stop", stop="END")) == ("stop_sequence", "END")
    assert an.stop_reason(last("stop")) == ("end_turn", None)


def test_anthropic_stream_events_in_order_with_usage():
    names = [n for n, _ in an.opening_events("msg_1", "m", 9)] + [an.delta_event("Hi")[0]]
    closing = an.closing_events(last("length"))
    names += [n for n, _ in closing]
    assert names == ["message_start", "content_block_start", "ping", "content_block_delta", "content_block_stop",
                     "message_delta", "message_stop"]  # fmt: skip
    assert an.opening_events("msg_1", "m", 9)[0][1]["message"]["usage"] == {"input_tokens": 9, "output_tokens": 0}
    assert closing[1][1]["delta"]["stop_reason"] == "max_tokens" and closing[1][1]["usage"] == {"output_tokens": 5}
    whole = an.message("msg_1", "m", "Hi", last(), 9)
    assert whole["content"] == [{"type": "text", "text": "Hi"}] and whole["usage"] == {"input_tokens": 9, "output_tokens": 5}


def test_errors_take_the_shape_of_the_api_asked():
    exc = model_not_found("x")
    assert error_body("/v1/messages", exc) == {"type": "error", "error": {"type": "not_found_error", "message": exc.message}}
    assert error_body("/v1/messages/count_tokens", bad_request("no"))["error"]["type"] == "invalid_request_error"
    assert error_body("/api/chat", exc) == {"error": exc.message}
    assert error_body("/v1/responses", exc) == exc.body()
    assert error_body("/v1/messages", OpenAIError(429, "busy"))["error"]["type"] == "rate_limit_error"
    assert error_body("/v1/messages", OpenAIError(502, "down", "server_error"))["error"]["type"] == "api_error"


def test_the_stop_matcher_remembers_which_stop_string_it_reached():
    matcher = StopMatcher(("END", "STOP"))
    assert matcher.feed("abc ST") == ("abc ", False) and matcher.hit is None
    assert matcher.feed("OP and END") == ("", True) and matcher.hit == "STOP"


# --- Responses ---


def test_responses_input_string_or_items_and_instructions():
    body = decode(rs.ResponsesRequest, {"model": "m", "input": "Hi", "instructions": "Be brief.", "max_output_tokens": 4})
    fields, plan = rs.translate(body)
    assert plan.messages == (ChatMessage("system", "Be brief."), ChatMessage("user", "Hi"))
    assert fields.sampling(8192).max_tokens == 4
    items = {"model": "m", "input": [
        {"type": "message", "role": "developer", "content": "Sys"},
        {"role": "user", "content": [{"type": "input_text", "text": "A"}, {"type": "input_text", "text": "B"}]},
    ]}  # fmt: skip
    assert rs.translate(decode(rs.ResponsesRequest, items))[1].messages == (ChatMessage("system", "Sys"), ChatMessage("user", "AB"))
    bad_fields = [
        ({"input": ""}, "input"), ({"input": "x", "previous_response_id": "resp_1"}, "previous_response_id"),
        ({"input": [{"role": "user", "content": [{"type": "input_image"}]}]}, "input[0].content[0].type"),
        ({"input": "x", "tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"input": "x", "tools": [{"type": "function"}]}, "tools[0].name"),
        ({"input": "x", "tools": [{"type": "function", "name": "f", "parameters": {"type": "nope"}}]}, "tools[0].parameters"),
        ({"input": "x", "tools": [{"type": "function", "name": "f"}], "tool_choice": {"type": "function", "name": "g"}},
         "tool_choice"),
        ({"input": [{"type": "function_call_output", "output": "1"}]}, "input[0].call_id"),
    ]  # fmt: skip
    for bad, param in bad_fields:
        with pytest.raises(OpenAIError) as caught:
            rs.translate(decode(rs.ResponsesRequest, {"model": "m"} | bad))
        assert caught.value.param == param, bad


ADD = {"type": "function", "name": "add", "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}}}


def test_responses_function_tools_and_call_items_plan_like_chat():
    body = decode(rs.ResponsesRequest, {"model": "m", "tools": [ADD], "tool_choice": {"type": "function", "name": "add"},
                                        "input": [{"role": "user", "content": "1+1?"},
                                                  {"type": "function_call", "call_id": "c1", "name": "add", "arguments": '{"a": 1}'},
                                                  {"type": "function_call_output", "call_id": "c1", "output": "2"}]})  # fmt: skip
    _fields, plan = rs.translate(body)
    assert plan.tool_mode == "forced" and plan.tool_names == ("add",)
    assert [m.role for m in plan.messages] == ["system", "user", "assistant", "tool"]
    answer = rs.whole("resp_1", body, plan, '{"name": "add", "arguments": {"a": 2}}', last("stop"))
    assert [(o["type"], o["name"], o["arguments"]) for o in answer["output"]] == [("function_call", "add", '{"a": 2}')]
    shape = rs.StreamShape("resp_1", body, 0, tools=True)
    pieces = pieces_of(plan, '{"name": "add", "arguments": {"a": 2222}}', step=3)
    events = shape.opening() + [e for p in pieces for e in shape.feed(p)] + shape.closing(last("stop"), "tool_calls")
    kinds = [e["type"] for e in events]
    assert kinds[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert set(kinds[3:-3]) == {"response.function_call_arguments.delta"} and len(kinds[3:-3]) > 2
    assert kinds[-3:] == ["response.function_call_arguments.done", "response.output_item.done", "response.completed"]
    added, done, final = events[2]["item"], events[-2]["item"], events[-1]["response"]
    assert (added["type"], added["name"], added["arguments"], added["status"]) == ("function_call", "add", "", "in_progress")
    assert "".join(e["delta"] for e in events[3:-3]) == events[-3]["arguments"] == done["arguments"] == '{"a": 2222}'
    assert {e["output_index"] for e in events[2:-1]} == {0} and {e["item_id"] for e in events[3:-2]} == {added["id"]}
    assert final["output"] == [done] and done["status"] == "completed" and done["call_id"] == added["call_id"]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))


def test_responses_a_call_cut_by_max_output_tokens_is_incomplete():
    body = decode(rs.ResponsesRequest, {"model": "m", "tools": [ADD], "tool_choice": "required", "input": "1+1?"})
    shape = rs.StreamShape("resp_1", body, 0, tools=True)
    reader = AnswerPieces(rs.translate(body)[1])
    events = [e for p in reader.feed('{"name": "add", "arguments": {"a": 2', "length") for e in shape.feed(p)]
    events += shape.closing(last("length"), "length")
    assert events[-2]["item"]["status"] == "incomplete" and events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["output"][0]["arguments"] == '{"a": 2'  # all of it: no closing brace was generated


def test_responses_stream_events_numbered_and_complete():
    body = decode(rs.ResponsesRequest, {"model": "m", "input": "Hi"})
    shape = rs.StreamShape("resp_1", body, 0)
    events = shape.opening() + shape.delta("Hel") + shape.delta("lo") + shape.closing(last("stop"))
    assert [e["type"] for e in events] == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta", "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "response.completed",
    ]  # fmt: skip
    assert [e["sequence_number"] for e in events] == list(range(10))
    final = events[-1]["response"]
    assert final["output"][0]["content"][0]["text"] == "Hello" and final["status"] == "completed"
    assert final["usage"]["input_tokens"] == 9 and final["usage"]["output_tokens"] == 5
    cut = rs.response("resp_1", body, 0, "x", last("length"))
    assert cut["status"] == "incomplete" and cut["incomplete_details"] == {"reason": "max_output_tokens"}


# --- Ollama ---


def test_ollama_options_become_sampling():
    options = decode(ol.Options, {"num_predict": 8, "temperature": 0.2, "seed": 3, "top_p": 0.5, "stop": ["x"]})
    sampling = ol.sampling_fields("m", options).sampling(8192)
    assert (sampling.max_tokens, sampling.temperature, sampling.seed, sampling.top_p, sampling.stop) == (8, 0.2, 3, 0.5, ("x",))
    assert ol.sampling_fields("m", decode(ol.Options, {"num_predict": -1})).sampling(8192).max_tokens is None
    shaping = {"top_k": 7, "min_p": 0.05, "repeat_penalty": 1.2, "presence_penalty": 0.5, "frequency_penalty": 0.25}
    s = ol.sampling_fields("m", decode(ol.Options, shaping)).sampling(8192)
    assert (s.top_k, s.min_p, s.repetition_penalty, s.presence_penalty, s.frequency_penalty) == (7, 0.05, 1.2, 0.5, 0.25)
    with pytest.raises(OpenAIError) as bad:
        ol.sampling_fields("m", decode(ol.Options, {"repeat_penalty": 0})).sampling(8192)
    assert bad.value.param == "repetition_penalty"
    with pytest.raises(msgspec.ValidationError, match="mirostat"):
        decode(ol.Options, {"mirostat": 1})
    with pytest.raises(OpenAIError) as bad_format:
        ol.response_format("yaml")
    assert bad_format.value.param == "format"


def test_ollama_chat_plan_tools_history_and_format():
    weather = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    tools = [{"type": "function", "function": {"name": "weather", "parameters": weather}}]
    history = [{"role": "user", "content": "Paris?"},
               {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "weather", "arguments": {"city": "Paris"}}}]},
               {"role": "tool", "content": "sunny", "tool_name": "weather"}]  # fmt: skip
    plan = ol.chat_plan(decode(ol.ChatRequest, {"model": "m", "messages": history, "tools": tools}))
    assert (plan.tool_mode, plan.tool_names, plan.json_schema) == ("auto", ("weather",), None)
    assert [m.role for m in plan.messages] == ["system", "user", "assistant", "tool"]
    assert '<tool_call>{"name": "weather", "arguments": {"city": "Paris"}}</tool_call>' in plan.messages[2].content
    schema = ol.chat_plan(decode(ol.ChatRequest, {"model": "m", "messages": history[:1], "format": weather}))
    assert json.loads(schema.json_schema or "") == weather and schema.tool_mode == "none"
    assert json.loads(ol.chat_plan(decode(ol.ChatRequest, {"model": "m", "messages": history[:1], "format": "json"})).json_schema or "") == {"type": "object"}
    with pytest.raises(OpenAIError) as bad:
        ol.chat_plan(decode(ol.ChatRequest, {"model": "m", "messages": [{"role": "assistant", "tool_calls": [{"function": {}}]}]}))
    assert bad.value.param == "messages[0].tool_calls[0].function.name"
    answer = ol.whole_piece("m", plan, '<tool_call>{"name": "weather", "arguments": {"city": "Rome"}}</tool_call>', last("stop"))
    assert answer["message"] == {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "weather", "arguments": {"city": "Rome"}}}]}


def test_ollama_generate_goes_through_the_template_unless_raw():
    body = decode(ol.GenerateBody, {"model": "m", "prompt": "Hi", "system": "S"})
    assert ol.generate_input(body) == {"messages": (ChatMessage("system", "S"), ChatMessage("user", "Hi"))}
    assert ol.generate_input(decode(ol.GenerateBody, {"model": "m", "prompt": "Hi", "raw": True})) == {"prompt": "Hi"}


def test_ollama_done_record_counts_and_nanoseconds():
    done = ol.done_fields(last("length"))
    assert done["done"] is True and done["done_reason"] == "length"
    assert (done["prompt_eval_count"], done["eval_count"]) == (9, 5)
    assert (done["total_duration"], done["prompt_eval_duration"], done["eval_duration"]) == (10**9, 250_000_000, 750_000_000)
    assert ol.piece("m", "Hi", chat=True)["message"] == {"role": "assistant", "content": "Hi"}
    assert ol.piece("m", "Hi", chat=False)["response"] == "Hi"


def test_the_api_key_and_the_errors_of_each_api_on_the_real_app():
    """The app as served, without its bus (no lifespan): the key check and the body checks come before any
    generation, so these answers need no cluster."""
    from fastapi.testclient import TestClient

    from services.gateway.app import create_app

    client = TestClient(create_app("nats://127.0.0.1:1", "node-test", api_key="k"))
    no_key = client.post("/v1/messages", json={})
    assert no_key.status_code == 401 and no_key.json()["error"]["type"] == "authentication_error"
    keyed = client.post("/v1/messages", headers={"x-api-key": "k"},
                        json={"model": "m", "messages": [{"role": "user", "content": "x"}]})  # fmt: skip
    assert keyed.status_code == 400 and keyed.json() == {"type": "error", "error": {
        "type": "invalid_request_error", "message": "max_tokens: Field required"}}  # fmt: skip
    ollama = client.post("/api/chat", headers={"Authorization": "Bearer k"}, json={"model": "m", "options": {"mirostat": 1}})
    assert ollama.status_code == 400 and "mirostat" in ollama.json()["error"]
    tools = client.post("/api/chat", headers={"x-api-key": "k"}, json={"model": "m", "tools": [{"type": "function"}],
                                                                       "messages": [{"role": "user", "content": "x"}]})  # fmt: skip
    assert tools.status_code == 400 and "tools" in tools.json()["error"]
    assert client.get("/api/version", headers={"x-api-key": "k"}).json() == {"version": ol.OLLAMA_API_VERSION}
    assert client.get("/api/nothing-here", headers={"x-api-key": "k"}).json().keys() == {"error"}
    responses = client.post("/v1/responses", headers={"x-api-key": "k"}, json={"model": "m", "input": ""})
    assert responses.status_code == 400 and responses.json()["error"]["param"] == "input"
