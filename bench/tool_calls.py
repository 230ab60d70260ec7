"""Tool-calling score: our scenarios (bench/tool_scenarios.toml) through a real node's Chat Completions API on
the real model, and the share that pass: a call expected is exactly one call whose arguments parse and validate
against its tool's schema (jsonschema); text expected is no call and no tool syntax left in the content. The
share whose call names the function a good answer would is reported apart (the grammar guarantees a valid call,
not the right one). The goal (issue 12) is every scenario passing on the 135M model.

    .venv/bin/python -m bench.tool_calls [--url http://127.0.0.1:8080] [--model smollm2-135m]

Without --url it starts a node of its own in a scratch state dir."""

from __future__ import annotations

import argparse
import json
import tomllib
from pathlib import Path

import httpx
import jsonschema

SCENARIOS = Path(__file__).with_name("tool_scenarios.toml")
MAX_TOKENS = 200


def load(path: Path = SCENARIOS) -> tuple[dict[str, dict], list[dict]]:
    data = tomllib.loads(path.read_text())
    return data["tools"], data["scenarios"]


def request_body(model: str, tools: dict[str, dict], scenario: dict) -> dict:
    """The scenario as a Chat Completions request (greedy, so a run is repeatable)."""
    names = scenario.get("tools", list(tools))
    choice = scenario["choice"]
    if choice not in ("auto", "none", "required"):
        choice = {"type": "function", "function": {"name": choice}}
    messages = []
    for m in scenario["messages"]:
        out = {k: v for k, v in m.items() if k != "tool_calls"}
        if "tool_calls" in m:
            out["tool_calls"] = [{"id": c["id"], "type": "function",
                                  "function": {"name": c["name"], "arguments": c["arguments"]}} for c in m["tool_calls"]]  # fmt: skip
        messages.append(out)
    return {
        "model": model, "messages": messages, "tool_choice": choice, "temperature": 0, "max_tokens": MAX_TOKENS,
        "tools": [{"type": "function", "function": {"name": n, **tools[n]}} for n in names],
        "stream": bool(scenario.get("stream")),
    }  # fmt: skip


def score(tools: dict[str, dict], scenario: dict, message: dict) -> tuple[bool, bool | None, str]:
    """(passed, named the expected function (None: no function expected), why it failed)."""
    calls = message.get("tool_calls") or []
    content = message.get("content") or ""
    if "<tool_call>" in content or "</tool_call>" in content:
        return False, None, "tool syntax left in the content"
    if scenario["expect"] == "text":
        return (not calls), None, f"{len(calls)} unexpected call(s)" if calls else ""
    if len(calls) != 1:
        return False, False, f"{len(calls)} calls"
    function = calls[0]["function"]
    name = function["name"]
    if name not in tools:
        return False, False, f"unknown function {name!r}"
    try:
        jsonschema.validate(json.loads(function["arguments"]), tools[name]["parameters"])
    except (ValueError, jsonschema.ValidationError) as exc:
        return False, name == scenario.get("function"), f"arguments: {str(exc).splitlines()[0]}"
    return True, name == scenario.get("function"), ""


def streamed_message(lines: list[str]) -> dict:
    """The message a stream of chat chunks adds up to (content and tool call deltas)."""
    content, calls = "", {}
    for line in lines:
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        for choice in json.loads(line.removeprefix("data: ")).get("choices", []):
            delta = choice["delta"]
            content += delta.get("content") or ""
            for d in delta.get("tool_calls") or []:
                call = calls.setdefault(d["index"], {"function": {"name": "", "arguments": ""}})
                call["function"]["name"] += (d.get("function") or {}).get("name") or ""
                call["function"]["arguments"] += (d.get("function") or {}).get("arguments") or ""
    return {"content": content or None, "tool_calls": [calls[i] for i in sorted(calls)]}


def ask(client: httpx.Client, body: dict) -> dict:
    if not body["stream"]:
        r = client.post("/v1/chat/completions", json=body)
        r.raise_for_status()
        return r.json()["choices"][0]["message"]
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        return streamed_message(list(r.iter_lines()))


def run(url: str, model: str) -> tuple[int, int, int, int]:
    tools, scenarios = load()
    passed = right = named = 0
    with httpx.Client(base_url=url, timeout=600) as client:
        for scenario in scenarios:
            ok, good_name, why = score(tools, scenario, ask(client, request_body(model, tools, scenario)))
            passed += ok
            if good_name is not None:
                named += 1
                right += good_name
            mark = "pass" if ok else "FAIL"
            print(f"{scenario['name']:<36} {mark}  right function: {good_name}  {why}")
    return passed, len(scenarios), right, named


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running node's gateway; without it a node is started")
    parser.add_argument("--model", default="smollm2-135m")
    args = parser.parse_args()
    node = None
    if args.url is None:
        from bench.node_process import Node, scratch_dir

        node = Node(scratch_dir("exo-bench-tools-"))
        node.start()
        node.wait_ready(timeout=300)
    try:
        passed, total, right, named = run(args.url or node.base_url, args.model)  # type: ignore[union-attr]
    finally:
        if node is not None:
            node.stop()
    print(f"\ncalls that parse and validate, or text as expected: {passed}/{total} ({passed / total:.0%})")
    print(f"the call names the function a good answer calls: {right}/{named}")


if __name__ == "__main__":
    main()
