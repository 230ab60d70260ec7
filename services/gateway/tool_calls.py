"""Reading tool calls back out of generated text, and the chat shape that answers with them (OpenAI's
`message.tool_calls`, or streamed deltas: `index`, `id`, `function.name` once, then `arguments` in pieces), and
those same pieces without the chat chunks around them, for the other APIs' adapters to put in their own events."""

from __future__ import annotations

import json
import re
import secrets
from typing import NamedTuple

from services.gateway.completion_output import ChatShape
from services.gateway.generation_params import TOOL_CLOSE, TOOL_OPEN, ChatPlan
from services.gateway.openai_schema import chat_completion
from services.gateway.tool_formats import held_from, marker_at, native_calls, xml_call

_CALL = re.compile(re.escape(TOOL_OPEN) + r"(.*?)(?:" + re.escape(TOOL_CLOSE) + r"|$)", re.DOTALL)


def new_call_id() -> str:
    return "call_" + secrets.token_hex(12)


def tool_call(name: str, arguments: str, call_id: str | None = None) -> dict:
    return {"id": call_id or new_call_id(), "type": "function", "function": {"name": name, "arguments": arguments}}


def parse_forced(text: str) -> list[dict]:
    """The whole output of a forced call: `{"name": ..., "arguments": {...}}`, made by the grammar."""
    call = json.loads(text)
    return [tool_call(call["name"], json.dumps(call["arguments"]))]


def parse_auto(text: str, names: tuple[str, ...], fmt: str = "hermes") -> tuple[str | None, list[dict]]:
    """The `<tool_call>` blocks the prompt asks for (JSON, or qwen3_coder's XML inside), then the calls in the
    model's own syntax (`fmt`, its card's tool_call_format: tool_formats.py), as calls (those that name a known
    tool), and the text around them as content; tool syntax never stays in the content, even a block that does
    not parse."""
    found = [call for body in _CALL.findall(text) if (call := _block_call(body)) is not None]
    content = _CALL.sub("", text).strip() if TOOL_OPEN in text else text
    content, native = native_calls(fmt, content)
    calls = [tool_call(name, arguments if isinstance(arguments, str) else json.dumps(arguments))
             for name, arguments in found + native if name in names]  # fmt: skip
    return (content or None) if calls else content, calls


def _block_call(body: str) -> tuple[str, object] | None:
    try:
        call = json.loads(body.strip())
    except ValueError:
        return xml_call(body)
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        return None
    return call["name"], call.get("arguments", {})


class ToolChatShape(ChatShape):
    """A chat answer that may be tool calls. Forced calls stream: the name once its JSON is complete, then the
    arguments as they come (holding back the closing brace of the call object). With `auto` (and `none`, whose
    tool syntax is still taken out) the text streams up to a `<tool_call>` (see `streamable`), and what follows
    it is read at the end: the calls, and the rest of the content, which then adds up to the whole answer's."""

    def __init__(self, request_id: str, model: str, plan: ChatPlan, index: int = 0) -> None:
        super().__init__(request_id, model, index)
        self.plan, self.text, self.sent = plan, "", 0
        self.call_id = new_call_id()
        self.name_sent = False

    def pieces(self, text: str, finish: str | None) -> list[dict]:
        self.text += text
        if self.plan.tool_mode == "forced":
            out = self._forced_deltas(cut=finish == "length")
            return out + ([self._chunk({}, "tool_calls" if finish == "stop" else finish)] if finish else [])
        if finish is None:
            end = streamable(self.text, self.plan.tool_format)
            out = [self._chunk({"content": self.text[self.sent : end]}, None)] if end > self.sent else []
            self.sent = max(self.sent, end)
            return out
        content, calls = self._auto(self.text)
        rest = _unsent(content or "", self.text[: self.sent])
        out = [self._chunk({"content": rest}, None)] if rest else []
        if not calls:
            return out + [self._chunk({}, finish)]
        deltas = [{"index": i} | c for i, c in enumerate(calls)]
        return out + [self._chunk({"tool_calls": deltas}, None), self._chunk({}, "tool_calls")]

    def _auto(self, text: str) -> tuple[str | None, list[dict]]:
        content, calls = parse_auto(text, self.plan.tool_names, self.plan.tool_format)
        if self.plan.tool_mode == "none":  # the calls are not answered, but their syntax is still taken out
            return (content or "") if calls else content, []
        return content, calls

    def _forced_deltas(self, cut: bool) -> list[dict]:
        out = []
        if not self.name_sent:
            head = re.match(r'\{"name": ("(?:[^"\\]|\\.)*"), "arguments": ', self.text)
            if head is None:
                return []
            self.name_sent, self.sent = True, head.end()
            function = {"name": json.loads(head[1]), "arguments": ""}
            out.append(self._delta({"id": self.call_id, "type": "function", "function": function}))
        # the last char may be the call object's closing brace, not the arguments' (unless the tokens ran out)
        end = len(self.text) - (0 if cut else 1)
        if end > self.sent:
            out.append(self._delta({"function": {"arguments": self.text[self.sent : end]}}))
            self.sent = end
        return out

    def _delta(self, call: dict) -> dict:
        return self._chunk({"tool_calls": [{"index": 0} | call]}, None)

    def whole(self, text: str, finish: str, usage_: dict) -> dict:
        if self.plan.tool_mode == "forced":
            calls = parse_forced(text) if finish == "stop" else []
            content = None if calls else text
        else:
            content, calls = self._auto(text)
        finish = "tool_calls" if calls else finish
        body = chat_completion(self.request_id, self.model, content, finish, usage_, self.index)  # type: ignore[arg-type]
        if calls:
            body["choices"][0]["message"]["tool_calls"] = calls
        return body


def streamable(text: str, fmt: str = "hermes") -> int:
    """How much of an `auto` answer can go out before its end: the text before a `<tool_call>` or what may be its
    start (or the start of the model's own syntax, `fmt`), less the whitespace just before it (the content around
    calls is stripped), so nothing while it is all whitespace."""
    return len(text[: min(marker_at(text, TOOL_OPEN), held_from(fmt, text))].rstrip())


def _unsent(content: str, sent: str) -> str:
    """What of the whole answer's content is still to send, after the streamed text (which may have had leading
    whitespace that the content, stripped around a call, does not)."""
    return content[len(sent) :] if content.startswith(sent) else content[len(sent.lstrip()) :]


def read_answer(plan: ChatPlan, text: str, finish: str) -> tuple[str | None, list[dict]]:
    """(content, OpenAI tool_calls) of a whole answer, read as Chat Completions reads it: for the adapters."""
    message = ToolChatShape("", "", plan).whole(text, finish, {})["choices"][0]["message"]
    return message["content"], message.get("tool_calls", [])


class Text(NamedTuple):
    text: str


class CallStart(NamedTuple):
    call: int  # the call's index in the answer
    call_id: str
    name: str


class Arguments(NamedTuple):
    call: int
    piece: str


class Finish(NamedTuple):
    reason: str  # OpenAI's: "stop", "length" or "tool_calls"


Piece = Text | CallStart | Arguments | Finish


class AnswerPieces:
    """A streamed chat answer as Chat Completions streams it (ToolChatShape with tools: a forced call's arguments
    in pieces as they come; under `auto` the text up to a call as it comes, the calls at the end), read out of its
    chunks: the one place generated text becomes tool-call pieces, for the Anthropic and Responses adapters, which
    only put the pieces in their own events."""

    def __init__(self, plan: ChatPlan) -> None:
        self.shape = ToolChatShape("", "", plan) if plan.tool_names else ChatShape("", "")

    def feed(self, text: str, finish: str | None) -> list[Piece]:
        """The pieces of one generated chunk (`finish`: its OpenAI finish reason, on the last)."""
        out: list[Piece] = []
        for chunk in self.shape.pieces(text, finish):
            choice = chunk["choices"][0]
            delta = choice["delta"]
            if delta.get("content"):
                out.append(Text(delta["content"]))
            for call in delta.get("tool_calls", []):
                if "id" in call:
                    out.append(CallStart(call["index"], call["id"], call["function"]["name"]))
                if call["function"].get("arguments"):
                    out.append(Arguments(call["index"], call["function"]["arguments"]))
            if choice["finish_reason"] is not None:
                out.append(Finish(choice["finish_reason"]))
        return out
