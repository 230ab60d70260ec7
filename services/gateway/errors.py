"""OpenAI-shaped errors: one exception type, the handlers that render it and FastAPI's own errors in its shape."""

from __future__ import annotations

import msgspec
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

import structlog

log = structlog.get_logger()


class OpenAIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.param = param
        self.headers = headers

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


class ErrorDetail(msgspec.Struct):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(msgspec.Struct):
    """What OpenAIError.body() produces, declared for /openapi.json (a unit test holds the two together)."""

    error: ErrorDetail


def bad_request(message: str, param: str | None = None, code: str | None = None) -> OpenAIError:
    return OpenAIError(400, message, param=param, code=code)


def model_not_found(model: str) -> OpenAIError:
    return OpenAIError(404, f"the model {model!r} does not exist", code="model_not_found", param="model")


def unavailable(message: str) -> OpenAIError:
    return OpenAIError(503, message, type_="service_unavailable", code="no_ready_instance")


def body_too_large(limit: int, size: int | None = None) -> OpenAIError:
    got = f"{size} bytes" if size is not None else f"more than {limit} bytes"
    return OpenAIError(413, f"request body is {got}; the limit is {limit} bytes (--max-body-bytes)",
                       code="request_too_large")  # fmt: skip


def internal_error(exc: BaseException) -> OpenAIError:
    return OpenAIError(500, f"internal error: {type(exc).__name__}: {exc}", "server_error", "internal_error")


def from_http_exception(method: str, path: str, exc: HTTPException) -> OpenAIError:
    """Starlette's own answers (an unknown route, a method the route does not take) in OpenAI's shape."""
    if exc.status_code == 404:
        return OpenAIError(404, f"no route {method} {path}", code="not_found", headers=dict(exc.headers) if exc.headers else None)
    if exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        return OpenAIError(405, f"{method} is not allowed on {path}; allowed: {allowed}", code="method_not_allowed",
                           headers=dict(exc.headers) if exc.headers else None)  # fmt: skip
    kind = "server_error" if exc.status_code >= 500 else "invalid_request_error"
    return OpenAIError(exc.status_code, str(exc.detail), kind, headers=dict(exc.headers) if exc.headers else None)


def from_validation_error(exc: RequestValidationError) -> OpenAIError:
    """FastAPI's checks of query and path parameters: a 400 naming the parameter, like our body checks."""
    first = exc.errors()[0] if exc.errors() else {}
    loc = [str(part) for part in first.get("loc", ())]
    param = loc[-1] if len(loc) > 1 else None
    where = ".".join(loc) or "request"
    return bad_request(f"invalid {where}: {first.get('msg', 'invalid value')}", param=param)


async def openai_error_handler(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, OpenAIError)
    return exc.response()


async def http_exception_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    return from_http_exception(request.method, request.url.path, exc).response()


async def validation_error_handler(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return from_validation_error(exc).response()
