"""The one translation of a chat request into what a runner generates from: the prompt's messages, the grammar
(a JSON schema) its output must match, and how the output is read back (text, or tool calls). Pure; the OpenAI
handler calls it, and other APIs' adapters can build the same ChatCompletionRequest shape and call it too.

Tools are rendered by the model's chat template in its own tool format where its card names one we read back
(TEMPLATE_TOOL_FORMATS: the runner passes `tools` to the template, and earlier calls and tool results as the
templates take them). Elsewhere (SmolLM2's template ignores `tools`) a fallback: a system message lists the
functions (their JSON schemas) and asks for `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`; earlier
assistant calls are written back in that syntax and `tool` messages keep their role. The plan holds both; the
route picks one by the card (ChatPlan.reading). Forced output (`required`,
a named function) is decoded under a grammar: `{"name": <one of the tools>, "arguments": <its parameters>}`."""

from __future__ import annotations

import json
from typing import Literal

import llguidance
import msgspec

from shared.generation import ChatMessage
from shared.models import ToolCallFormat

from services.gateway.errors import bad_request
from services.gateway.openai_schema import ChatCompletionRequest, InMessage, ResponseFormat, ToolDef, invalid_field

ToolMode = Literal["none", "auto", "forced"]
TOOL_OPEN, TOOL_CLOSE = "<tool_call>", "</tool_call>"
ANY_OBJECT = {"type": "object"}
# Tool-call formats whose syntax we read back (tool_formats.py): a model with one gets the tools from its template.
TEMPLATE_TOOL_FORMATS = frozenset({"hermes", "qwen3_coder", "llama3_json", "mistral", "deepseek_v3", "pythonic"})
NO_PARAMETERS = {"type": "object", "properties": {}}


class ChatPlan(msgspec.Struct, frozen=True):
    messages: tuple[ChatMessage, ...]
    json_schema: str | None  # the grammar: None for free text
    tool_mode: ToolMode  # "auto": the text is parsed for tool calls; "forced": the whole output is one call
    tool_names: tuple[str, ...] = ()
    tool_format: ToolCallFormat = "none"  # the model's own tool-call syntax, read back too under "auto"
    tools: str | None = None  # for the chat template (GenerateRequest.tools): set by `reading`
    # The same request for a template with its own tool format: its messages (calls and tool results as templates
    # take them, no tool description) and the tools as JSON. None: no tools in play.
    templated: tuple[tuple[ChatMessage, ...], str] | None = None

    def reading(self, tool_format: ToolCallFormat) -> ChatPlan:
        """This plan for a model whose tool-call syntax is `tool_format` (the routes read it off the model's card,
        after the request's own checks): its calls are read back in that syntax too, and where the template has
        that format of its own, it renders the tools."""
        if tool_format in TEMPLATE_TOOL_FORMATS and self.templated is not None:
            messages, tools = self.templated
            return msgspec.structs.replace(self, tool_format=tool_format, messages=messages, tools=tools, templated=None)
        return msgspec.structs.replace(self, tool_format=tool_format)


def plan_chat(body: ChatCompletionRequest) -> ChatPlan:
    if not body.messages:
        raise bad_request("messages must not be empty", param="messages")
    _check_parts(body.messages)
    tools = _tools(body.tools)
    mode, chosen = _tool_choice(body.tool_choice, tools)
    schema = _response_schema(body.response_format)
    if schema is not None and mode == "forced":
        raise bad_request("response_format cannot be combined with a forced tool call", param="response_format")
    messages = tuple(_message(m) for m in body.messages)
    templated = None
    if tools and mode != "none":
        messages = _with_tools_system(messages, tools)
        templated = tuple(_template_message(m) for m in body.messages), _template_tools(body.tools or [])
    if mode == "forced":
        schema = call_schema({n: tools[n] for n in chosen})
    elif not tools:
        mode = "none"
    return ChatPlan(messages, None if schema is None else json.dumps(schema), mode, tuple(tools), templated=templated)


def plan_of_openai_shapes(model: str, messages: list[dict], tools: list[dict] | None, tool_choice: str | dict | None,
                          response_format: dict | None = None) -> ChatPlan:  # fmt: skip
    """The plan of another API's request, once its adapter has put it in Chat Completions' shapes (plain dicts)."""
    shaped = {"model": model, "messages": messages, "tools": tools or None, "tool_choice": tool_choice,
              "response_format": response_format}  # fmt: skip
    try:
        body = msgspec.convert(shaped, ChatCompletionRequest)
    except msgspec.ValidationError as exc:
        raise bad_request(f"invalid request: {exc}", param=invalid_field(str(exc))) from None
    return plan_chat(body)


def _check_parts(messages: list[InMessage]) -> None:
    """Multi-part content is read as its text parts; any other part (an image, audio) is refused by name."""
    for i, m in enumerate(messages):
        for j, part in enumerate(m.content if isinstance(m.content, list) else []):
            if part.type != "text":
                field = f"messages[{i}].content[{j}].type"
                raise bad_request(f"content parts of type {part.type!r} are not supported (only text)", param=field)


def call_schema(tools: dict[str, dict]) -> dict:
    """One call of one of these functions, with arguments that match its parameters."""
    options = [
        {
            "type": "object",
            "properties": {"name": {"const": name}, "arguments": params},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for name, params in tools.items()
    ]
    return options[0] if len(options) == 1 else {"anyOf": options}


def compile_error(schema: dict) -> str | None:
    """Why llguidance cannot compile this schema (the runner compiles it again, against its tokenizer)."""
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(schema))
    except Exception as exc:  # noqa: BLE001 - whatever the library refuses is the client's schema's fault
        return str(exc)
    return llguidance.LLMatcher.validate_grammar(grammar) or None


def _tools(tools: list[ToolDef] | None) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for i, tool in enumerate(tools or []):
        if tool.type != "function" or tool.function is None:
            raise bad_request("only function tools are supported", param=f"tools[{i}].type")
        if not tool.function.name:
            raise bad_request("a tool needs a function name", param=f"tools[{i}].function.name")
        params = tool.function.parameters or NO_PARAMETERS
        if (why := compile_error(params)) is not None:
            field = f"tools[{i}].function.parameters"
            raise bad_request(f"the parameters schema cannot be compiled: {why}", param=field)
        out[tool.function.name] = params
    return out


def _tool_choice(choice: str | dict | None, tools: dict[str, dict]) -> tuple[ToolMode, list[str]]:
    if choice is None:
        return ("auto" if tools else "none"), []
    if choice in ("auto", "none"):
        return choice, []  # type: ignore[return-value]
    if not tools:
        raise bad_request("tool_choice needs tools", param="tool_choice")
    if choice == "required":
        return "forced", list(tools)
    function = choice.get("function") if isinstance(choice, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str):
        raise bad_request("tool_choice must be auto, none, required or a named function", param="tool_choice")
    if name not in tools:
        raise bad_request(f"tool_choice names {name!r}, which is not in tools", param="tool_choice")
    return "forced", [name]


def grammar_of_response_format(response_format: dict | None) -> str | None:
    """The grammar of a response_format in Chat Completions' shape (for a prompt that is not a chat)."""
    try:
        fmt = msgspec.convert(response_format, ResponseFormat | None)  # type: ignore[arg-type]
    except msgspec.ValidationError as exc:
        raise bad_request(f"invalid response_format: {exc}", param="response_format") from None
    schema = _response_schema(fmt)
    return None if schema is None else json.dumps(schema)


def _response_schema(fmt: ResponseFormat | None) -> dict | None:
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return ANY_OBJECT
    if fmt.type != "json_schema":
        raise bad_request(f"unknown response_format type {fmt.type!r}", param="response_format.type")
    if fmt.json_schema is None or fmt.json_schema.schema is None:
        raise bad_request("json_schema.schema is required", param="response_format.json_schema.schema")
    if (why := compile_error(fmt.json_schema.schema)) is not None:
        raise bad_request(f"the schema cannot be compiled: {why}", param="response_format.json_schema.schema")
    return fmt.json_schema.schema


def _message(m: InMessage) -> ChatMessage:
    if m.role == "assistant" and m.tool_calls:
        written = [{"name": c.function.name, "arguments": _arguments(c.function.arguments)} for c in m.tool_calls]
        calls = "".join(TOOL_OPEN + json.dumps(call) + TOOL_CLOSE for call in written)
        return ChatMessage("assistant", m.text + calls)
    return m.as_chat_message()


def _template_message(m: InMessage) -> ChatMessage:
    """A message for a template with its own tool format: an assistant's calls and a tool's call id as fields."""
    if m.role == "assistant" and m.tool_calls:
        calls = [{"type": "function", "id": c.id, "function": {"name": c.function.name, "arguments": _arguments(c.function.arguments)}}
                 for c in m.tool_calls]  # fmt: skip
        return ChatMessage("assistant", m.text, tool_calls=json.dumps(calls))
    if m.role == "tool":
        return ChatMessage("tool", m.text, tool_call_id=m.tool_call_id)
    return m.as_chat_message()


def _template_tools(tools: list[ToolDef]) -> str:
    return json.dumps([{"type": "function", "function": {
        "name": t.function.name, "description": t.function.description or "",
        "parameters": t.function.parameters or NO_PARAMETERS}} for t in tools if t.function is not None])  # fmt: skip


def _arguments(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _with_tools_system(messages: tuple[ChatMessage, ...], tools: dict[str, dict]) -> tuple[ChatMessage, ...]:
    listing = "\n".join(json.dumps({"name": n, "parameters": p}) for n, p in tools.items())
    text = (
        "You can call these functions:\n" + listing + "\nTo call one, reply with " + TOOL_OPEN
        + '{"name": "<function name>", "arguments": {<arguments>}}' + TOOL_CLOSE
    )  # fmt: skip
    if messages and messages[0].role == "system":
        return (ChatMessage("system", messages[0].content + "\n\n" + text),) + messages[1:]
    return (ChatMessage("system", text),) + messages
