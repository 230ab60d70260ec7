"""A model's own tool-call syntax (its card's `tool_call_format`, read from its chat template), read back into calls
under `tool_choice: auto`. Pure. The prompt asks every model for our `<tool_call>{json}</tool_call>` (tool_calls.py
reads that, and it is hermes' own syntax); a model trained on another syntax may write that one instead, and
then its calls are found here and its syntax never stays in the answer's content:

- qwen3_coder  `<tool_call><function=NAME><parameter=P>VALUE</parameter></function></tool_call>`
- llama3_json  `<|python_tag|>{"name": NAME, "parameters": {...}}`, or that JSON as the whole answer (`;` between calls)
- mistral      `[TOOL_CALLS][{"name": NAME, "arguments": {...}}]`, or `[TOOL_CALLS]NAME[ARGS]{...}`
- deepseek_v3  `<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME ```json {...}``` <｜tool▁call▁end｜>...`
               (and V3.1's `<｜tool▁call▁begin｜>NAME<｜tool▁sep｜>{...}<｜tool▁call▁end｜>`)
- pythonic     `[NAME(P=VALUE, ...), ...]` as the whole answer, or between LFM2's `<|tool_call_start|>` and `_end|>`
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any

Call = tuple[str, Any]  # the function's name and its arguments (a JSON value; a string when they did not parse)

PYTHON_TAG = "<|python_tag|>"
MISTRAL_CALLS, MISTRAL_ARGS = "[TOOL_CALLS]", "[ARGS]"
PYTHONIC_START, PYTHONIC_END = "<|tool_call_start|>", "<|tool_call_end|>"
DEEPSEEK_BEGIN, DEEPSEEK_END = "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>"
DEEPSEEK_CALL = re.compile(r"<｜tool▁call▁begin｜>(.*?)<｜tool▁sep｜>(.*?)(?:<｜tool▁call▁end｜>|$)", re.DOTALL)
XML_FUNCTION = re.compile(r"<function=([^>\s]+)>(.*?)(?:</function>|$)", re.DOTALL)
XML_PARAMETER = re.compile(r"<parameter=([^>\s]+)>(.*?)(?:</parameter>|$)", re.DOTALL)
FENCED = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.DOTALL)

# Where a format's syntax starts, when it starts with a marker: the text before it can stream, the rest is held.
MARKERS = {"llama3_json": PYTHON_TAG, "mistral": MISTRAL_CALLS, "deepseek_v3": DEEPSEEK_BEGIN, "pythonic": PYTHONIC_START}
# Formats whose calls are the whole answer, with no marker: an answer that starts so is held to its end.
WHOLE_ANSWER_OPENERS = {"llama3_json": "{", "pythonic": "["}


def native_calls(fmt: str, text: str) -> tuple[str, list[Call]]:
    """The calls written in the model's own syntax, and the text with that syntax taken out (all of it from its
    marker on, even what does not parse)."""
    if fmt == "llama3_json":
        return _llama3_json(text)
    if fmt == "mistral":
        return _mistral(text)
    if fmt == "deepseek_v3":
        return _deepseek(text)
    if fmt == "pythonic":
        return _pythonic(text)
    return text, []


def xml_call(body: str) -> Call | None:
    """qwen3_coder's `<function=NAME><parameter=P>VALUE</parameter>...</function>` (a `<tool_call>` block's body).
    A value is JSON where it parses as JSON (numbers, booleans, objects), else the string itself."""
    found = XML_FUNCTION.search(body)
    if found is None:
        return None
    arguments = {name: _value(value.strip("\n")) for name, value in XML_PARAMETER.findall(found[2])}
    return found[1], arguments


def held_from(fmt: str, text: str) -> int:
    """Where the format's syntax starts (or may be starting, at the end of the text), len(text) if nowhere: the
    text before it can stream before the answer ends."""
    if (opener := WHOLE_ANSWER_OPENERS.get(fmt)) is not None and text.lstrip().startswith(opener):
        return 0
    marker = MARKERS.get(fmt)
    if marker is None:
        return len(text)
    return marker_at(text, marker)


def marker_at(text: str, marker: str) -> int:
    """Where `marker` starts in the text, or where its start may be beginning at the end of the text, else
    len(text)."""
    at = text.find(marker)
    if at >= 0:
        return at
    held = next((k for k in range(min(len(marker) - 1, len(text)), 0, -1) if marker.startswith(text[-k:])), 0)
    return len(text) - held


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _named(obj: Any, arguments_key: str) -> Call | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    arguments = obj.get(arguments_key, obj.get("arguments", {}))
    if isinstance(arguments, str):
        arguments = _value(arguments)
    return obj["name"], arguments


def _json_calls(text: str, arguments_key: str) -> list[Call] | None:
    """A JSON call object, a list of them, or several objects separated by `;`: None unless all of it parses."""
    text = text.strip()
    try:
        parsed = json.loads(text)
        items = parsed if isinstance(parsed, list) else [parsed]
    except ValueError:
        try:
            items = [json.loads(part) for part in text.split(";") if part.strip()]
        except ValueError:
            return None
    calls = [_named(item, arguments_key) for item in items]
    if not calls or any(c is None for c in calls):
        return None
    return calls  # type: ignore[return-value]


def _llama3_json(text: str) -> tuple[str, list[Call]]:
    at = text.find(PYTHON_TAG)
    if at >= 0:
        return text[:at].strip(), _json_calls(text[at + len(PYTHON_TAG) :], "parameters") or []
    calls = _json_calls(text, "parameters") if text.lstrip().startswith("{") else None
    return ("", calls) if calls else (text, [])


def _mistral(text: str) -> tuple[str, list[Call]]:
    at = text.find(MISTRAL_CALLS)
    if at < 0:
        return text, []
    body = text[at + len(MISTRAL_CALLS) :]
    calls: list[Call] = []
    if MISTRAL_ARGS in body:  # [TOOL_CALLS]name[ARGS]{...}, once per call
        for part in body.split(MISTRAL_CALLS):
            name, _, arguments = part.partition(MISTRAL_ARGS)
            if name.strip() and arguments:
                calls.append((name.strip(), _value(arguments.strip())))
    else:
        calls = _json_calls(body, "arguments") or []
    return text[:at].strip(), calls


def _deepseek(text: str) -> tuple[str, list[Call]]:
    at = text.find(DEEPSEEK_BEGIN)
    if at < 0:
        return text, []
    block, _, after = text[at + len(DEEPSEEK_BEGIN) :].partition(DEEPSEEK_END)
    calls = []
    for head, body in DEEPSEEK_CALL.findall(block):
        if head.strip() == "function":  # R1: the call's type, then the name on the first line after the separator
            name, _, arguments = body.partition("\n")
        else:  # V3.1: the name, then the arguments
            name, arguments = head, body
        fenced = FENCED.match(arguments)
        calls.append((name.strip(), _value((fenced[1] if fenced else arguments).strip())))
    return (text[:at] + after).strip(), calls


def _pythonic(text: str) -> tuple[str, list[Call]]:
    at = text.find(PYTHONIC_START)
    if at >= 0:  # LFM2 marks its list: the text before it is content, the list is read, the syntax goes
        body = text[at + len(PYTHONIC_START) :].split(PYTHONIC_END)[0]
        _listed, calls = _pythonic(body)
        return text[:at].strip(), calls
    if not text.lstrip().startswith("["):
        return text, []
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return text, []
    if not isinstance(tree, ast.List) or not tree.elts:
        return text, []
    calls = []
    for element in tree.elts:
        if not isinstance(element, ast.Call) or not isinstance(element.func, ast.Name) or element.args:
            return text, []
        try:
            arguments = {k.arg: ast.literal_eval(k.value) for k in element.keywords if k.arg is not None}
        except (ValueError, TypeError, SyntaxError, RecursionError):  # not a literal: not a call we can answer
            return text, []
        calls.append((element.func.id, arguments))
    return "", calls
