"""ASGI middleware of the gateway: a request-size limit, and unhandled errors answered in OpenAI's shape.

Both are plain ASGI (not Starlette's BaseHTTPMiddleware) so that a body is never buffered here and a
streaming answer passes through untouched.
"""

from __future__ import annotations

import json

import structlog
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.gateway.errors import OpenAIError, body_too_large, internal_error

log = structlog.get_logger()

# Big enough for any request that can fit a model we know: the longest context of the model cards is 163,840
# tokens, ~4 bytes of text a token, ~6 bytes each once JSON-escaped (\uXXXX) and again that much in chat
# history of prior turns: ~8 MB. A body larger than that cannot be a request we could serve.
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024


def declared_length(scope: Scope) -> int | None:
    """The request's Content-Length, or None (chunked, or absent). The server already refused a malformed one."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class BodyLimit:
    """413 for a body over `max_bytes`: at once when Content-Length says so (the body is never read: the server
    drains it and keeps the connection), else as soon as the bytes received pass the limit (chunked bodies).
    The 413 is raised from `receive` as an OpenAIError, so the route's error handling answers it."""

    def __init__(self, app: ASGIApp, max_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = declared_length(scope)
        if declared is not None and declared > self.max_bytes:
            await send_error(send, body_too_large(self.max_bytes, declared))
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise body_too_large(self.max_bytes)
            return message

        await self.app(scope, counting_receive, send)


class ErrorsAsJSON:
    """Any exception a route lets escape becomes a 500 (an OpenAIError its own status) in OpenAI's shape, and is
    not raised further: Starlette's ServerErrorMiddleware re-raises after its 500, and uvicorn then closes the
    keep-alive connection under the client's next request. An SSE stream that already started ends with an
    error event instead. Anything else that fails half-sent is re-raised: closing is the only honest end."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started: Message | None = None

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = message
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except ClientDisconnect:
            return  # the client is gone: no one to answer
        except Exception as exc:  # noqa: BLE001 - the point: nothing escapes to the server
            err = exc if isinstance(exc, OpenAIError) else internal_error(exc)
            if not isinstance(exc, OpenAIError):
                log.exception("unhandled error", path=scope.get("path"), exc_info=exc)
            if started is None:
                await send_error(send, err)
            elif _is_event_stream(started):
                data = json.dumps(err.body(), separators=(",", ":"))
                await send({"type": "http.response.body", "body": f"data: {data}\n\n".encode(), "more_body": False})
            else:
                raise


def _is_event_stream(start: Message) -> bool:
    return any(k == b"content-type" and v.startswith(b"text/event-stream") for k, v in start.get("headers", ()))


async def send_error(send: Send, err: OpenAIError) -> None:
    body = json.dumps(err.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in (err.headers or {}).items()]
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
