"""The optional API key: where it comes from, and the dependency that makes the API routes require it.

The key reaches the gateway in its environment (EXO_API_KEY) or as a file (EXO_API_KEY_FILE), never on a
command line: /proc/<pid>/cmdline is readable by every user of the machine, a process's environment only by
its owner.
"""

from __future__ import annotations

import hmac
import ipaddress
from pathlib import Path

from fastapi import Depends
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from services.gateway.errors import OpenAIError

API_KEY_ENV = "EXO_API_KEY"
API_KEY_FILE_ENV = "EXO_API_KEY_FILE"


class BadApiKey(ValueError):
    pass


def resolve_api_key(key: str | None, key_file: str | Path | None) -> str | None:
    """The key from a value or a file (its first line, whitespace stripped); None when neither is given."""
    if key and key_file:
        raise BadApiKey("give the API key or a key file, not both")
    if key_file:
        try:
            key = Path(key_file).expanduser().read_text().strip()
        except OSError as exc:
            raise BadApiKey(f"cannot read the API key file: {exc}") from None
        if not key:
            raise BadApiKey(f"the API key file {key_file} is empty")
    if key is not None and (key != key.strip() or not key):
        raise BadApiKey("the API key must not be empty nor start or end with whitespace")
    return key or None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a hostname: it may resolve to anything


def exposure_warning(host: str, has_key: bool) -> str | None:
    """A warning when the API listens beyond this machine and anyone who reaches the port may use it."""
    if has_key or is_loopback(host):
        return None
    return (f"the API listens on {host} without an API key: anyone who reaches this port can run the models and"
            " place or delete instances; set --api-key-file (or EXO_API_KEY)")  # fmt: skip


def key_matches(expected: str, bearer: str | None, x_api_key: str | None) -> bool:
    """Either header may carry it (OpenAI clients send a Bearer token, Anthropic's send x-api-key)."""
    given = [v for v in (bearer, x_api_key) if v is not None]
    return any(hmac.compare_digest(v.encode(), expected.encode()) for v in given)


_bearer = HTTPBearer(auto_error=False, description="the gateway's API key, when one is set")
_x_api_key = APIKeyHeader(name="x-api-key", auto_error=False, description="the same key, Anthropic style")


def require_api_key(expected: str):  # noqa: ANN201 - a FastAPI dependency
    async def check(
        bearer: HTTPAuthorizationCredentials | None = Depends(_bearer),
        x_api_key: str | None = Depends(_x_api_key),
    ) -> None:
        if not key_matches(expected, bearer.credentials if bearer else None, x_api_key):
            given = bearer is not None or x_api_key is not None
            raise OpenAIError(
                401,
                "incorrect API key provided" if given else "this API needs a key: send Authorization: Bearer KEY",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return Depends(check)
