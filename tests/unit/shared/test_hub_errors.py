"""Each failure of the hub as one (status, code, reason) (shared/hub_errors.py), from the exceptions
huggingface-hub's own hf_raise_for_status makes of the hub's answers."""

from __future__ import annotations

import httpx2
import pytest
from huggingface_hub.utils import hf_raise_for_status

from shared.hub_errors import hub_failure

REPO = "org/model"
HUB = "https://huggingface.co"


def hub_answer(status: int, error_code: str | None, path: str) -> BaseException:
    """What huggingface-hub raises for this answer of the hub (the X-Error-Code header decides the type)."""
    headers = {"X-Error-Code": error_code} if error_code else {}
    response = httpx2.Response(status, headers=headers, request=httpx2.Request("GET", f"{HUB}{path}"), text="{}")
    with pytest.raises(Exception) as raised:
        hf_raise_for_status(response)
    return raised.value


@pytest.mark.parametrize(
    ("status", "error_code", "path", "expected", "says"),
    [
        (401, "GatedRepo", f"/{REPO}/resolve/main/config.json", (403, "gated_model"), "org/model is gated"),
        (404, "RepoNotFound", f"/api/models/{REPO}", (404, "model_not_found"), "no model 'org/model'"),
        (404, "RevisionNotFound", f"/api/models/{REPO}/revision/v9", (404, "model_not_found"), "no such revision"),
        (404, "EntryNotFound", f"/{REPO}/resolve/main/x.json", (404, "model_not_found"), "lacks a file"),
        (500, None, f"/{REPO}/resolve/main/model.safetensors", (503, "hub_error"), "answered an error"),
    ],
)
def test_each_answer_of_the_hub_has_its_status_and_code(status, error_code, path, expected, says):
    failure = hub_failure(REPO, hub_answer(status, error_code, path), token_set=False)
    assert (failure.status, failure.code) == expected
    assert says in failure.reason


def test_a_gated_repo_says_whether_a_token_was_set():
    exc = hub_answer(401, "GatedRepo", f"/{REPO}/resolve/main/config.json")
    assert "no token is set (HF_TOKEN" in hub_failure(REPO, exc, token_set=False).reason
    assert "the token given has no access" in hub_failure(REPO, exc, token_set=True).reason


@pytest.mark.parametrize("exc", [ConnectionRefusedError(111, "Connection refused"), httpx2.ConnectError("dns"),
                                 TimeoutError("read timed out")])  # fmt: skip
def test_no_answer_at_all_is_unreachable_and_names_the_offline_switch(exc):
    failure = hub_failure(REPO, exc, token_set=False)
    assert (failure.status, failure.code) == (503, "hub_unreachable")
    assert type(exc).__name__ in failure.reason and "HF_HUB_OFFLINE=1" in failure.reason
