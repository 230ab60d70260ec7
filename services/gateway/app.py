"""The gateway: FastAPI app on a NATS connection that follows the cluster state."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from shared import subjects
from shared.bus import StateFollower, connect, disconnect
from shared.events import AnyEvent
from shared.inference_log import ensure_inference_stream
from shared.state import ClusterState
from shared.service import register

from services.gateway import completions, inferences_api, instances, metrics
from services.gateway.errors import OpenAIError, not_found_handler, openai_error_handler, unexpected_error_handler
from services.gateway.generation_client import GenerationClient
from services.gateway.inference_recorder import InferenceRecorder
from services.gateway.metrics import CountResponses, GatewayMetrics


class Gateway:
    """What the routes share: the bus connection, the followed state, the generation client, the metrics and
    the inference recorder."""

    def __init__(self, nats_url: str, node_id: str) -> None:
        self.nats_url = nats_url
        self.node_id = node_id

    async def start(self) -> None:
        self.nc = await connect(self.nats_url, f"exo-gateway:{self.node_id}")
        self.client = GenerationClient(self.nc)
        self.metrics = GatewayMetrics(lambda: self.follower.state)
        self.recorder = InferenceRecorder(self.nc, self.metrics, lambda: self.follower.state)
        self.follower = StateFollower(self.nc.jetstream(), on_event=self._on_event)
        await self.follower.start()
        await ensure_inference_stream(self.nc.jetstream())
        self.service = await register(self.nc, subjects.SERVICE_GATEWAY, self.node_id, "OpenAI API")

    def _on_event(self, state: ClusterState, event: AnyEvent) -> None:
        self.client.on_event(state, event)
        self.metrics.on_event(state, event)

    async def stop(self) -> None:
        await self.service.stop()
        await self.recorder.drain()
        await disconnect(self.nc)


def create_app(nats_url: str, node_id: str, on_stopped: Callable[[], None] | None = None) -> FastAPI:
    """The gateway's app; `on_stopped` runs once the gateway has let go of the bus (its process arms an exit
    deadline there: see shared/service.py)."""
    gateway = Gateway(nats_url, node_id)

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        await gateway.start()
        app.state.gateway = gateway
        yield
        await gateway.stop()
        if on_stopped is not None:
            on_stopped()

    app = FastAPI(title="exo-distributed gateway", lifespan=lifespan)
    app.add_exception_handler(OpenAIError, openai_error_handler)
    app.add_exception_handler(404, not_found_handler)
    app.add_exception_handler(Exception, unexpected_error_handler)
    app.include_router(completions.router)
    app.include_router(instances.router)
    app.include_router(inferences_api.router)
    app.include_router(metrics.router)
    app.add_middleware(CountResponses)
    return app

