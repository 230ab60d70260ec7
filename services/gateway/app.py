"""The gateway: FastAPI app on a NATS connection that follows the cluster state."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from shared import subjects
from shared.bus import StateFollower, connect, disconnect
from shared.bus_roles import GATEWAY
from shared.events import AnyEvent
from shared.process_lifetime import register
from shared.state import ClusterState

from services.gateway import completions, health, inferences_api, instances, metrics, models_api
from services.gateway.adapters import anthropic, ollama, responses
from services.gateway.adapters.error_shapes import error_handler, http_error_handler
from services.gateway.api_key import require_api_key
from services.gateway.dashboard import routes as dashboard
from services.gateway.dashboard.live_facts import LiveFacts
from services.gateway.dashboard.meter import Meter
from services.gateway.dashboard.shutdown import end_feeds_on_termination
from services.gateway.errors import OpenAIError, validation_error_handler
from services.gateway.generation_client import GenerationClient
from services.gateway.inference_recorder import InferenceRecorder
from services.gateway.metrics import CountResponses, GatewayMetrics
from services.gateway.middleware import DEFAULT_MAX_BODY_BYTES, BodyLimit, ErrorsAsJSON
from services.gateway.openai_schema import ChatCompletionRequest, CompletionRequest
from services.gateway.openapi_doc import describe


class Gateway:
    """What the routes share: the bus connection, the followed state, the generation client, the metrics and
    the inference recorder."""

    def __init__(self, nats_url: str, node_id: str) -> None:
        self.nats_url = nats_url
        self.node_id = node_id
        self.meter = Meter()  # the dashboard's charts: what the requests served here measured
        self.live_facts = LiveFacts()
        self.feeds_stopping = asyncio.Event()  # set on SIGTERM: open dashboard feeds end, so uvicorn can stop

    async def start(self) -> None:
        self.nc = await connect(self.nats_url, f"exo-gateway:{self.node_id}", role=GATEWAY)
        self.client = GenerationClient(self.nc)
        self.metrics = GatewayMetrics(lambda: self.follower.state)
        self.recorder = InferenceRecorder(self.nc, self.metrics, lambda: self.follower.state, self.meter)
        await self.live_facts.follow(self.nc)
        end_feeds_on_termination(self.feeds_stopping)
        self.follower = StateFollower(self.nc.jetstream(), on_event=self._on_event)
        await self.follower.start()
        self.service = await register(self.nc, subjects.SERVICE_GATEWAY, self.node_id, "OpenAI API")

    def _on_event(self, state: ClusterState, event: AnyEvent) -> None:
        self.client.on_event(state, event)
        self.metrics.on_event(state, event)

    async def stop(self) -> None:
        await self.service.stop()
        await self.recorder.drain()
        await disconnect(self.nc)


def create_app(
    nats_url: str,
    node_id: str,
    on_stopped: Callable[[], None] | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    api_key: str | None = None,
) -> FastAPI:
    """The gateway's app; `on_stopped` runs once the gateway has let go of the bus (its process arms an exit
    deadline there: see shared/process_lifetime.py). With `api_key`, every route but /health requires it."""
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
    # errors in the shape of the API asked (OpenAI's, Anthropic's under /v1/messages, Ollama's under /api/)
    app.add_exception_handler(OpenAIError, error_handler)
    app.add_exception_handler(HTTPException, http_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    # added last = outermost: the size limit answers before anything reads the body; every answer is counted
    app.add_middleware(ErrorsAsJSON)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    app.add_middleware(CountResponses)
    guarded = [require_api_key(api_key)] if api_key else []
    app.include_router(completions.router, dependencies=guarded)
    app.include_router(instances.router, dependencies=guarded)
    app.include_router(inferences_api.router, dependencies=guarded)
    app.include_router(models_api.router, dependencies=guarded)
    app.include_router(metrics.router)  # like /health: counts and names, no prompts; scrapers need no key
    # Other vendors' APIs, documented by their vendors (and in the README): not in our /openapi.json, whose
    # errors are all OpenAI-shaped
    for adapter in (anthropic, responses, ollama):
        app.include_router(adapter.router, dependencies=guarded, include_in_schema=False)
    app.include_router(health.router)
    app.include_router(dashboard.page)
    app.include_router(dashboard.feed, dependencies=guarded)
    describe(app, [ChatCompletionRequest, CompletionRequest, instances.CreateInstance])
    return app
