"""Submitting a request larger than one bus message: the gateway serves its pieces until the runner has them.

NATS refuses a message over the server's max_payload (1 MB by default), and a request within a model's context
can be larger (stop strings, a long prompt of a long-context model). Such a request goes as a small
GenerateUpload; the runner that takes it asks for each piece on a subject of the request's own."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import msgspec
from nats.aio.client import Client as NATS

from shared import subjects
from shared.generation import UPLOAD_HEADER, GenerateRequest, GenerateUpload

HEADROOM_BYTES = 4096  # for a message's headers, under the server's max_payload


def split(payload: bytes, max_payload: int) -> list[bytes] | None:
    """The pieces to send `payload` in, each within `max_payload`; None when it fits in one message."""
    room = max(1, max_payload - HEADROOM_BYTES)
    if len(payload) <= room:
        return None
    return [payload[i : i + room] for i in range(0, len(payload), room)]


@asynccontextmanager
async def submission(nc: NATS, request: GenerateRequest) -> AsyncIterator[tuple[bytes, dict[str, str] | None]]:
    """(the message to submit, its headers), serving the pieces meanwhile when the request needs them."""
    payload = msgspec.json.encode(request)
    pieces = split(payload, nc.max_payload)
    if pieces is None:
        yield payload, None
        return

    async def serve_piece(msg) -> None:  # noqa: ANN001
        index = msg.data.decode(errors="replace")
        await msg.respond(pieces[int(index)] if index.isdigit() and int(index) < len(pieces) else b"")

    source = subjects.upload(request.request_id)
    sub = await nc.subscribe(source, cb=serve_piece)
    try:
        upload = GenerateUpload(request.request_id, len(payload), len(pieces), source)
        yield msgspec.json.encode(upload), {UPLOAD_HEADER: "1"}
    finally:
        await sub.unsubscribe()
