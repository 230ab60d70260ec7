"""Schemathesis against the described schema of a real node (the real model): no request it makes, valid or
not, gets a server error (5xx; a 503 that says the Hugging Face hub is out of reach is the hub's, below).
Bounded: a few examples per operation and generation mode.

Schemathesis' own pytest integration (`from_fixture`) fails on pytest 9, so the test drives its hypothesis
strategies itself. Half of the generated generation requests name the real model (a random string never
would), with max_tokens capped so that every one of them finishes in seconds."""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from hypothesis import strategies as st
from schemathesis.generation.modes import GenerationMode

from tests.conftest import MODEL, Node

pytestmark = pytest.mark.slow

EXAMPLES = 12  # per operation and mode: ~8 operations x 2 modes x 12, < 60 s here
MAX_TOKENS_CAP = 4


def aim_at_the_model(body: object, aim: bool) -> None:
    """Name the real model in the body when `aim`; a body that names it (aimed, or generated from the schema's
    examples) gets max_tokens capped: uncapped, one request may decode to the end of the context (8,192 tokens),
    longer than the call's timeout."""
    if not isinstance(body, dict) or "model" not in body:
        return
    if aim:
        body["model"] = MODEL
    if body["model"] != MODEL:
        return
    for field in ("max_tokens", "max_completion_tokens"):
        if isinstance(body.get(field), int):
            body[field] = min(body[field], MAX_TOKENS_CAP)
    if "max_tokens" not in body:
        body["max_tokens"] = MAX_TOKENS_CAP


def upstream_unreachable(response: httpx.Response) -> bool:
    """A model id shaped like a hub repo ("1/0") that the node must look up on the Hugging Face hub, which this
    machine cannot reach: 503 `hub_unreachable` says so (the client may retry), not a fault of the server."""
    if response.status_code != 503:
        return False
    try:
        return response.json()["error"]["code"] == "hub_unreachable"
    except (ValueError, KeyError, TypeError):
        return False


def test_no_server_errors(node: Node) -> None:
    schema = schemathesis.openapi.from_url(f"{node.base_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 7
    server_errors: list[str] = []
    calls = 0
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode), real_model=st.booleans())
            @settings(max_examples=EXAMPLES, deadline=None, phases=[Phase.explicit, Phase.generate],
                      suppress_health_check=list(HealthCheck), database=None)  # fmt: skip
            def fuzz(case, real_model: bool) -> None:  # noqa: ANN001 - a schemathesis Case
                nonlocal calls
                if operation.path.endswith("completions"):
                    aim_at_the_model(case.body, real_model)
                try:
                    response = case.call(timeout=60)
                except httpx.HTTPError as exc:  # a dropped connection or a hang is as bad as a 5xx
                    server_errors.append(f"{case.method} {case.formatted_path}: {exc!r}")
                    return
                calls += 1
                if upstream_unreachable(response):
                    return
                if response.status_code >= 500:
                    server_errors.append(f"{case.method} {case.formatted_path} {response.status_code}: "
                                         f"{response.text[:300]} <- {case.body!r:.300}")  # fmt: skip

            try:
                fuzz()
            except Unsatisfiable:  # nothing of this operation can be made invalid (e.g. no parameters at all)
                assert mode == GenerationMode.NEGATIVE, operation.label
    assert calls > 100
    assert server_errors == [], "\n".join(server_errors)  # the empty prompt's 500 (issue 17) included: admission 400s it
