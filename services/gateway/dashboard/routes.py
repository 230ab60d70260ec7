"""/dashboard: the page and its files (open: they hold no data), and /dashboard/feed, the live feed (server-sent
events; behind the API key when one is set).

The feed pushes a `cluster` event when the view changed (a new event in the log, or live node facts that moved)
and a `metrics` event when the charts' numbers did. It wakes on every applied event, and at least each second
to look at the in-memory facts and meter: nothing is asked over the network per client.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, StreamingResponse

from services.gateway.dashboard.view import cluster_view
from services.gateway.errors import OpenAIError

STATIC = Path(__file__).parent / "static"
FILES = {p.name: p for p in STATIC.iterdir() if p.is_file()}
MEDIA_TYPES = {".html": "text/html", ".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml"}
CHECK_EVERY_S = 1.0
KEEPALIVE_S = 15.0  # an SSE comment now and then, so proxies do not close a quiet feed

page = APIRouter(include_in_schema=False)
# Not in /openapi.json: it is the page's own channel, and an endless stream would hang a schema fuzzer.
feed = APIRouter(include_in_schema=False)


@page.get("/dashboard")
async def dashboard() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html", headers={"Cache-Control": "no-cache"})


@page.get("/dashboard/static/{name}")
async def static_file(name: str) -> FileResponse:
    path = FILES.get(name)  # only the files shipped in the folder, never a path the client made up
    if path is None:
        raise OpenAIError(404, f"no dashboard file {name}", code="not_found")
    media = MEDIA_TYPES.get(path.suffix, "application/octet-stream")
    return FileResponse(path, media_type=media, headers={"Cache-Control": "no-cache"})


@feed.get("/dashboard/feed", response_class=StreamingResponse)
async def live_feed(request: Request) -> StreamingResponse:
    """Server-sent events: `cluster` (nodes, links, instances, leader) and `metrics` (the charts' series)."""
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(_events(request), media_type="text/event-stream", headers=headers)


def _sse(event: str, data: str) -> bytes:
    return f"event: {event}\ndata: {data}\n\n".encode()


async def _events(request: Request) -> AsyncIterator[bytes]:
    gateway = request.app.state.gateway
    sent: dict[str, str] = {}
    last_write = time.monotonic()
    yield b"retry: 2000\n\n"
    while not (gateway.feeds_stopping.is_set() or await request.is_disconnected()):
        now = {
            "cluster": json.dumps(cluster_view(gateway.follower.state, gateway.live_facts.latest)),
            "metrics": json.dumps(gateway.meter.series(time.time())),
        }
        for event, data in now.items():
            if sent.get(event) != data:
                sent[event] = data
                last_write = time.monotonic()
                yield _sse(event, data)
        if time.monotonic() - last_write > KEEPALIVE_S:
            last_write = time.monotonic()
            yield b": keep-alive\n\n"
        seq = gateway.follower.state.last_seq
        try:
            await gateway.follower.wait_until(lambda s: s.last_seq != seq, CHECK_EVERY_S)
        except TimeoutError:
            pass
