"""Trifurcated inference through the product (the session's node): a validator beside the main model and its
prompt-lookup draft. `block` stops the answer with an error, `annotate` carries the verdict, and the request
leaves three rows in exo_inferences (trits -1, 0, +1) with one seed. The deny-list validator makes the unsafe
verdict deterministic; the guard model (the same SmolLM2, on the node's instance) gives a real one. A group placed
with POST /instances (on two nodes of its own) puts its validator apart and gives a `true` request its settings."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator

import httpx
import openai
import pytest

from tests.conftest import MODEL, Node, wait_for

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


# --- a placed group (POST /instances with trifurcated): its roles, its preview and its defaults ---------------
# Two nodes of its own: the validator lands on the node the main model does not use.

GROUP = {"validator": MODEL, "policy": "block"}
DENIED = {"validator": "deny-list", "deny": ["orchard"]}  # says no policy: the group's `block` applies


@pytest.fixture(scope="module")
def pair(start_node: Callable[..., Node]) -> Iterator[list[Node]]:
    first = start_node("group-0", "--no-model")
    second = start_node("group-1", "--no-model", "--no-master", "--nats-url", first.nats_url)
    first.wait_until(lambda h: len(h["nodes"]) == 2, 30, "2 nodes")
    yield [first, second]
    for n in (second, first):
        n.stop()


@pytest.fixture(scope="module")
def group(pair: list[Node]) -> dict[str, dict]:
    """The group's instances by role (and the whole reply), placed once, ready."""
    node = pair[0]
    placed = httpx.post(f"{node.base_url}/instances", json={"model": MODEL, "trifurcated": GROUP}, timeout=60)
    assert placed.status_code == 201, placed.text
    roles = {i["role"]: i for i in placed.json()["instances"]}
    wait_for(lambda: {r["instance_id"] for r in roles.values()} <= set(node.health()["ready_instances"]), 240,
             "the group's instances ready", node)  # fmt: skip
    return roles | {"reply": placed.json()}


def nodes_of(instance: dict) -> set[str]:
    return {s["node_id"] for s in instance["shards"]}


def test_bad_group_fields_are_400s_naming_them_and_the_preview_says_where_each_role_goes(pair: list[Node]) -> None:
    url = pair[0].base_url
    for fields, param in [({"validator": "no-such-model"}, "trifurcated.validator"), ({"policy": "warn"}, "trifurcated.policy"),
                          ({"polcy": "block"}, "trifurcated.polcy"), ({"draft": "no-such-draft"}, "trifurcated.draft")]:  # fmt: skip
        r = httpx.post(f"{url}/instances", json={"model": MODEL, "trifurcated": fields}, timeout=30)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (fields, r.text)
    r = httpx.get(f"{url}/instances/preview", params={"model": MODEL, "policy": "warn"}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "trifurcated.policy"
    # three roles (a draft model too) on two nodes: the validator apart, the draft beside one of them, saying so
    params = {"model": MODEL, **GROUP, "draft": MODEL}
    preview = httpx.get(f"{url}/instances/preview", params=params, timeout=30).json()["group"]
    assert preview["feasible"] and [(r["role"], r["trit"]) for r in preview["roles"]] == [("main", 0), ("validator", -1), ("draft", 1)]
    main, validator, draft = preview["roles"]
    assert main["shares"] is None and validator["shares"] is None and not set(main["nodes"]) & set(validator["nodes"])
    assert draft["shares"] is not None and draft["shares"].endswith("no node is free of them"), draft
    assert httpx.get(f"{url}/instances", timeout=30).json()["instances"] == []  # a preview places nothing, nor a 400


def test_a_placed_group_lists_its_roles_and_a_trifurcated_chat_takes_its_settings(pair: list[Node], group: dict) -> None:
    node = pair[0]
    main, validator = group["main"], group["validator"]
    assert group["reply"]["group"] == {"validator": MODEL, "draft": "ngram", "policy": "block"}
    assert main["shares"] is None and validator["shares"] is None and not nodes_of(main) & nodes_of(validator)
    listed = {i["instance_id"]: i for i in httpx.get(f"{node.base_url}/instances", timeout=30).json()["instances"]}
    assert listed.keys() == {main["instance_id"], validator["instance_id"]}  # "ngram": no draft instance
    assert listed[validator["instance_id"]]["group"] == {"role": "validator", "main": main["instance_id"], "validator": None,
                                                         "draft": None, "policy": None}  # fmt: skip
    assert listed[main["instance_id"]]["group"]["policy"] == "block"
    # `true`: the group's own validator instance judges (its verdict names it), under the group's `block`
    try:
        r = client(node).chat.completions.create(model=MODEL, messages=ASK, max_tokens=8, temperature=0,
                                                 extra_body={"trifurcated": True})  # fmt: skip
        verdict = r.model_extra["validator"]  # type: ignore[index]
        assert verdict["validator"] == validator["instance_id"] and verdict["verdict"] == "safe", verdict  # unsafe: blocked
    except openai.PermissionDeniedError as denied:  # the 135M guard may judge it unsafe: blocked, by the group's policy
        assert validator["instance_id"] in denied.message
    # what the request says wins; what it leaves out (the policy) is the group's
    with pytest.raises(openai.PermissionDeniedError):
        client(node).chat.completions.create(model=MODEL, messages=ASK, max_tokens=8, extra_body={"trifurcated": DENIED})
    r = client(node).chat.completions.create(model=MODEL, messages=ASK, max_tokens=8,
                                             extra_body={"trifurcated": DENIED | {"policy": "annotate"}})  # fmt: skip
    assert r.model_extra["validator"]["verdict"] == "unsafe"  # type: ignore[index]
    assert _rows(node, r.id)[r.id]["instance"] == main["instance_id"]  # the group's main instance answered


def test_the_dashboard_labels_the_groups_roles(pair: list[Node], group: dict) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install -e '.[test]'")
    chromium = os.environ.get("EXO_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium on this machine")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page()
        page.goto(f"{pair[0].base_url}/dashboard")
        for role, label in (("main", "main 0"), ("validator", "validator -1")):
            badge = page.locator(f'.instance[data-instance="{group[role]["instance_id"]}"] .badge.role')
            sync_api.expect(badge).to_have_text(label, timeout=20_000)
        browser.close()
