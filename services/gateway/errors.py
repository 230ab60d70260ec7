"""OpenAI-shaped errors: one exception type, one handler that renders it."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import JSONResponse

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


def bad_request(message: str, param: str | None = None, code: str | None = None) -> OpenAIError:
    return OpenAIError(400, message, param=param, code=code)


def model_not_found(model: str) -> OpenAIError:
    return OpenAIError(404, f"the model {model!r} does not exist", code="model_not_found", param="model")


def unavailable(message: str) -> OpenAIError:
    return OpenAIError(503, message, type_="service_unavailable", code="no_ready_instance")


async def openai_error_handler(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, OpenAIError)
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


async def not_found_handler(request: Request, _exc: Exception) -> JSONResponse:
    err = OpenAIError(404, f"no route {request.method} {request.url.path}", code="not_found")
    return JSONResponse(err.body(), status_code=404)


async def unexpected_error_handler(_request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    err = OpenAIError(500, f"internal error: {type(exc).__name__}: {exc}", "server_error", "internal_error")
    return JSONResponse(err.body(), status_code=500)
