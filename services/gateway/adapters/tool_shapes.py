"""Tools of the Anthropic and Responses APIs in Chat Completions' shape and back, on plain dicts. Pure.

Each adapter passes its tools, tool choice and tool turns through these into the OpenAI fields (then the one chat
plan: generation_params.plan_chat), and the generated tool calls back out."""

from __future__ import annotations

import json


def anthropic_tools(tools: list[dict]) -> list[dict]:
    """Anthropic {name, description, input_schema} -> OpenAI {type: function, function: {name, description, parameters}}."""
    return [{"type": "function", "function": {"name": t["name"], "description": t.get("description", ""),
                                              "parameters": t.get("input_schema", {})}} for t in tools]  # fmt: skip


def anthropic_tool_choice(choice: dict | None) -> str | dict | None:
    kind = (choice or {}).get("type")
    if kind is None:
        return None
    if kind == "tool":
        return {"type": "function", "function": {"name": choice["name"]}}  # type: ignore[index]
    return {"auto": "auto", "any": "required", "none": "none"}[kind]


def anthropic_turn(role: str, blocks: list[dict]) -> list[dict]:
    """One Anthropic message -> OpenAI messages: text and tool_use blocks make one message (tool_use as
    tool_calls); each tool_result block is a `tool` message of its own."""
    out: list[dict] = []
    text = "".join(b.get("text", "") for b in blocks if b["type"] == "text")
    calls = [{"id": b["id"], "type": "function", "function": {"name": b["name"], "arguments": json.dumps(b.get("input", {}))}}
             for b in blocks if b["type"] == "tool_use"]  # fmt: skip
    for b in blocks:
        if b["type"] == "tool_result":
            content = b.get("content", "")
            if isinstance(content, list):
                content = "".join(c.get("text", "") for c in content if c.get("type") == "text")
            out.append({"role": "tool", "tool_call_id": b["tool_use_id"], "content": content})
    if text or calls:
        out.append({"role": role, "content": text or None} | ({"tool_calls": calls} if calls else {}))
    return out


def anthropic_content(text: str, tool_calls: list[dict]) -> list[dict]:
    """An answer (text, OpenAI tool_calls) as Anthropic content blocks."""
    blocks = [{"type": "text", "text": text}] if text else []
    return blocks + [{"type": "tool_use", "id": c["id"], "name": c["function"]["name"],
                      "input": json.loads(c["function"]["arguments"] or "{}")} for c in tool_calls]  # fmt: skip


def responses_tools(tools: list[dict]) -> list[dict]:
    """Responses {type: function, name, description, parameters, strict} -> Chat Completions' nested shape."""
    out = []
    for t in tools:
        if t.get("type") != "function":
            raise ValueError(f"tools of type {t.get('type')!r} are not supported")
        function = {k: t[k] for k in ("name", "description", "parameters", "strict") if k in t}
        out.append({"type": "function", "function": function})
    return out


def responses_items(items: list[dict]) -> list[dict]:
    """function_call and function_call_output input items -> an assistant tool call and its `tool` message."""
    out = []
    for item in items:
        if item.get("type") == "function_call":
            call = {"id": item["call_id"], "type": "function",
                    "function": {"name": item["name"], "arguments": item.get("arguments", "")}}  # fmt: skip
            out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif item.get("type") == "function_call_output":
            out.append({"role": "tool", "tool_call_id": item["call_id"], "content": item.get("output", "")})
    return out


def responses_output(tool_calls: list[dict]) -> list[dict]:
    """OpenAI tool_calls -> Responses output items."""
    return [{"type": "function_call", "id": "fc_" + c["id"], "call_id": c["id"], "name": c["function"]["name"],
             "arguments": c["function"]["arguments"], "status": "completed"} for c in tool_calls]  # fmt: skip


def ollama_format(format_: str | dict | None) -> dict | None:
    """Ollama's `format` ("json" or a JSON schema) as a Chat Completions response_format."""
    if format_ in (None, ""):
        return None
    if format_ == "json":
        return {"type": "json_object"}
    if isinstance(format_, dict):
        return {"type": "json_schema", "json_schema": {"name": "format", "schema": format_, "strict": True}}
    raise ValueError(f"format must be 'json' or a JSON schema, not {format_!r}")


def ollama_turn(message: dict) -> dict:
    """One Ollama message (its tool_calls' arguments are objects; a `tool` message names its tool) in Chat
    Completions' shape."""
    out = {"role": message["role"], "content": message.get("content") or ""}
    if message.get("tool_calls"):
        out["tool_calls"] = [{"id": f"call_{i}", "type": "function",
                              "function": {"name": c["function"]["name"], "arguments": _json_text(c["function"].get("arguments", {}))}}
                             for i, c in enumerate(message["tool_calls"])]  # fmt: skip
    if message["role"] == "tool" and message.get("tool_name"):
        out["name"] = message["tool_name"]
    return out


def _json_text(arguments: object) -> str:
    return arguments if isinstance(arguments, str) else json.dumps(arguments)


def ollama_tool_calls(tool_calls: list[dict]) -> list[dict]:
    """OpenAI tool_calls -> Ollama's: no id, the arguments an object."""
    return [{"function": {"name": c["function"]["name"], "arguments": json.loads(c["function"]["arguments"] or "{}")}}
            for c in tool_calls]  # fmt: skip
