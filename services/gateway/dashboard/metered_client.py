"""The generation client with a meter on it: every request the gateway serves, streamed or not, feeds the
dashboard's charts (meter.py) with its time to first token, its tokens and whether it waits or generates."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import cast

from nats.aio.client import Client as NATS

from shared.generation import GenerateRequest, TokenChunk

from services.gateway.dashboard.meter import Meter
from services.gateway.generation_client import GenerationClient


class MeteredGenerationClient(GenerationClient):
    def __init__(self, nc: NATS, meter: Meter) -> None:
        super().__init__(nc)
        self.meter = meter

    async def stream(self, instance_id: str, request: GenerateRequest) -> AsyncIterator[TokenChunk]:
        began = time.monotonic()
        self.meter.started(time.time())
        counted = 0  # completion tokens counted so far (chunks carry the running total)
        inner = cast(AsyncGenerator[TokenChunk, None], super().stream(instance_id, request))  # it is one
        try:
            async for chunk in inner:
                if chunk.completion_tokens > counted:
                    now = time.time()
                    if counted == 0:
                        self.meter.first_token(now, time.monotonic() - began)
                    self.meter.tokens(now, chunk.completion_tokens - counted)
                    counted = chunk.completion_tokens
                yield chunk
        finally:
            await inner.aclose()  # its own finally cancels the generation on the runner when we stop early
            self.meter.ended(time.time(), had_first_token=counted > 0)
