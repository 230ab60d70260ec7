"""Trifurcated inference through the product (the session's node): a validator beside the main model and its
prompt-lookup draft. `block` stops the answer with an error, `annotate` carries the verdict, and the request
leaves three rows in exo_inferences (trits -1, 0, +1) with one seed. The deny-list validator makes the unsafe
verdict deterministic; the guard model (the same SmolLM2, on the node's instance) gives a real one."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from tests.conftest import MODEL, Node

pytestmark = pytest.mark.slow

ASK = [{"role": "user", "content": "Repeat after me: the forbidden orchard has apples, the orchard has pears."}]
BLOCK = {"trifurcated": {"validator": "deny-list", "deny": [r"forbid+en"], "policy": "block"}}
ROWS_TIMEOUT_S = 60


def client(node: Node) -> openai.OpenAI:
    return openai.OpenAI(base_url=node.api_url, api_key="none", timeout=300, max_retries=0)


def test_block_stops_the_stream_with_an_error_and_the_whole_answer_with_a_403(node: Node) -> None:
    received = []
    with pytest.raises(openai.APIError) as err:
        for chunk in client(node).chat.completions.create(model=MODEL, messages=ASK, max_tokens=24, stream=True,
                                                          extra_body=BLOCK):  # fmt: skip
            received.append(chunk)
    assert "unsafe" in err.value.message and "forbid+en" in err.value.message
    assert all(c.choices == [] or c.choices[0].finish_reason is None for c in received)  # nothing ended as success
    with pytest.raises(openai.PermissionDeniedError) as denied:
        client(node).chat.completions.create(model=MODEL, messages=ASK, max_tokens=24, extra_body=BLOCK)
    assert denied.value.status_code == 403 and denied.value.code == "validator_blocked"
    # the same request without the matching pattern passes, annotated as safe
    passing = {"trifurcated": {"validator": "deny-list", "deny": ["bomb"], "policy": "block"}}
    r = client(node).chat.completions.create(model=MODEL, messages=ASK, max_tokens=8, extra_body=passing)
    assert r.choices[0].message.content and r.model_extra["validator"]["verdict"] == "safe"  # type: ignore[index]


def test_annotate_carries_the_guard_models_verdict_and_three_rows_share_a_seed(node: Node) -> None:
    tri = {"trifurcated": {"policy": "annotate"}}  # validator: the request's own model
    r = client(node).chat.completions.create(model=MODEL, messages=ASK, max_tokens=24, temperature=0, extra_body=tri)
    verdict = r.model_extra["validator"]  # type: ignore[index]
    assert verdict["verdict"] in ("safe", "unsafe") and isinstance(verdict["reason"], str), verdict
    assert r.choices[0].message.content and "speculative" in r.usage.model_extra  # type: ignore[union-attr]

    chunks = list(client(node).chat.completions.create(model=MODEL, messages=ASK, max_tokens=24, stream=True,
                                                       stream_options={"include_usage": True}, extra_body=tri))  # fmt: skip
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason is not None]
    assert len(finish) == 1 and finish[0].model_extra["validator"]["verdict"] == verdict["verdict"]  # type: ignore[index]
    assert chunks[-1].usage is not None and chunks[-1].model_extra["validator"] == finish[0].model_extra["validator"]  # type: ignore[index]

    rows = _rows(node, r.id)
    assert sorted(row["trit"] for row in rows.values()) == [-1, 0, 1], rows
    assert len({row["seed"] for row in rows.values()}) == 1 and rows[r.id]["seed"] is not None
    assert rows[f"{r.id}-validator"]["api"] == "validator" and rows[f"{r.id}-draft"]["model"] == "ngram"


def _rows(node: Node, rid: str) -> dict[str, dict]:
    wanted = {rid, f"{rid}-validator", f"{rid}-draft"}
    deadline = time.monotonic() + ROWS_TIMEOUT_S
    while True:
        data = httpx.get(f"{node.base_url}/v1/inferences", params={"limit": 50}, timeout=30).json()["data"]
        found = {row["id"]: row for row in data if row["id"] in wanted}
        if len(found) == 3 or time.monotonic() > deadline:
            return found
        time.sleep(1)
