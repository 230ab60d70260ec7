"""The ways a request to the Hugging Face hub fails, each with the HTTP status and code the API answers for it:
the gateway's card lookup and the worker's downloads name a failure alike. Pure: the caller says whether a token
is set (huggingface_hub.get_token)."""

from __future__ import annotations

from typing import Literal

import msgspec

HubFailureCode = Literal["gated_model", "model_not_found", "hub_error", "hub_unreachable"]


class HubFailure(msgspec.Struct, frozen=True):
    status: int
    code: HubFailureCode
    reason: str


def hub_failure(repo_id: str, exc: BaseException, token_set: bool) -> HubFailure:
    """Anything that is not an answer of the hub (refused connection, DNS, timeout) is `hub_unreachable`: the one
    failure the cache may still serve."""
    from huggingface_hub import errors

    if isinstance(exc, errors.GatedRepoError):
        token = "the token given has no access" if token_set else "no token is set (HF_TOKEN or `hf auth login`)"
        return HubFailure(403, "gated_model", f"{repo_id} is gated: accept its terms on the hub; {token}")
    if isinstance(exc, errors.RepositoryNotFoundError):
        return HubFailure(404, "model_not_found", f"no model {repo_id!r} on the Hugging Face hub (or it is "
                          "private and the token cannot see it)")  # fmt: skip
    if isinstance(exc, errors.RevisionNotFoundError):
        return HubFailure(404, "model_not_found", f"{repo_id} has no such revision")
    if isinstance(exc, errors.RemoteEntryNotFoundError):
        return HubFailure(404, "model_not_found", f"{repo_id} lacks a file it names: {str(exc)[:200]}")
    if isinstance(exc, errors.HfHubHTTPError):
        return HubFailure(503, "hub_error", f"the Hugging Face hub answered an error for {repo_id}: {exc}")
    return HubFailure(503, "hub_unreachable", f"cannot reach the Hugging Face hub for {repo_id} "
                      f"({type(exc).__name__}: {str(exc)[:200]}); set HF_HUB_OFFLINE=1 to use cached files")  # fmt: skip
