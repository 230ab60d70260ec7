"""One error (OpenAIError, raised anywhere in the gateway) in the shape of the API whose path was asked: the
Anthropic and Ollama clients read only their own shapes. Pure, but for the two handlers at the end."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from services.gateway.errors import OpenAIError, from_http_exception

ANTHROPIC_PATHS = ("/v1/messages",)
OLLAMA_PATHS = ("/api/",)

_ANTHROPIC_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
    413: "request_too_large", 429: "rate_limit_error", 503: "overloaded_error", 529: "overloaded_error",
}  # fmt: skip


def anthropic_error(exc: OpenAIError) -> dict:
    kind = _ANTHROPIC_TYPES.get(exc.status, "api_error" if exc.status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": exc.message}}


def ollama_error(exc: OpenAIError) -> dict:
    return {"error": exc.message}


def error_body(path: str, exc: OpenAIError) -> dict:
    if path.startswith(ANTHROPIC_PATHS):
        return anthropic_error(exc)
    if path.startswith(OLLAMA_PATHS):
        return ollama_error(exc)
    return exc.body()


def shaped(path: str, exc: OpenAIError) -> JSONResponse:
    return JSONResponse(error_body(path, exc), status_code=exc.status, headers=exc.headers)


async def error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, OpenAIError)
    return shaped(request.url.path, exc)


async def http_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    return shaped(request.url.path, from_http_exception(request.method, request.url.path, exc))
