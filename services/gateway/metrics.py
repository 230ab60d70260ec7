"""Prometheus metrics at GET /metrics: requests, tokens, latencies, queue depth, and the cluster's state.

Request metrics come from the finished requests (services/gateway/inference_recorder.py) and from every HTTP
response (a middleware); the cluster's (leader term, node memory, runner restarts) are read from the state
this gateway follows at each scrape. One registry per app, so two apps in one process do not collide.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from shared.events import AnyEvent, RunnerStatusChanged
from shared.inference_log import InferenceRecord
from shared.state import ClusterState, runner_key

router = APIRouter()
disable_created_metrics()  # the *_created series double every counter's lines and say little here

LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
INTER_TOKEN_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5)
STARTING_PHASES = ("importing", "loading")


class RunnerRestarts:
    """Counts runners that start again after having been ready (a crash and its restart, a worker's restart)."""

    def __init__(self) -> None:
        self.count = 0
        self._last_phase: dict[str, str] = {}
        self._ever_ready: set[str] = set()

    def see(self, event: AnyEvent) -> None:
        if not isinstance(event, RunnerStatusChanged):
            return
        key = runner_key(event.instance_id, event.rank)
        previous = self._last_phase.get(key)
        if event.phase in STARTING_PHASES and previous not in STARTING_PHASES and key in self._ever_ready:
            self.count += 1
        if event.phase == "ready":
            self._ever_ready.add(key)
        self._last_phase[key] = event.phase


class GatewayMetrics:
    def __init__(self, state: Callable[[], ClusterState]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("exo_requests", "Finished inference requests", ["api", "model", "status"], registry=r)
        self.tokens = Counter("exo_tokens", "Tokens of finished requests", ["model", "kind"], registry=r)
        self.http = Counter("exo_http_responses", "HTTP responses of the gateway", ["method", "route", "status"], registry=r)
        self.ttft = Histogram("exo_time_to_first_token_seconds", "Time to first token, as the gateway saw it",
                              ["model"], buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.latency = Histogram("exo_request_latency_seconds", "Request latency, submit to last token",
                                 ["model"], buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.inter_token = Histogram("exo_inter_token_seconds", "Time between two tokens of one request",
                                     ["model"], buckets=INTER_TOKEN_BUCKETS, registry=r)  # fmt: skip
        self.in_flight = Gauge("exo_requests_in_flight", "Requests submitted and not finished", registry=r)
        self.waiting = Gauge("exo_requests_waiting", "Requests in flight with no token yet (queued or prefilling)",
                             registry=r)  # fmt: skip
        self.restarts = RunnerRestarts()
        r.register(_StateCollector(state, self.restarts))

    def on_event(self, _state: ClusterState, event: AnyEvent) -> None:
        self.restarts.see(event)

    def finished(self, record: InferenceRecord) -> None:
        self.requests.labels(record.api, record.model, str(record.status)).inc()
        self.tokens.labels(record.model, "prompt").inc(record.prompt_tokens)
        self.tokens.labels(record.model, "completion").inc(record.completion_tokens)
        self.latency.labels(record.model).observe(record.latency_ms / 1000)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _StateCollector(Collector):
    """Read at each scrape from the state the gateway follows: nothing to keep in step."""

    def __init__(self, state: Callable[[], ClusterState], restarts: RunnerRestarts) -> None:
        self._state = state
        self._restarts = restarts

    def collect(self) -> Iterator:
        state = self._state()
        yield GaugeMetricFamily("exo_leader_term", "The leader master's lease term", value=state.leader_term)
        yield GaugeMetricFamily("exo_nodes", "Nodes in the cluster state", value=len(state.nodes))
        yield CounterMetricFamily("exo_runner_restarts", "Runners that started again after being ready",
                                  value=self._restarts.count)  # fmt: skip
        total = GaugeMetricFamily("exo_node_memory_total_bytes", "A node's memory", labels=["node", "hostname"])
        available = GaugeMetricFamily("exo_node_memory_available_bytes", "A node's free memory (its last facts)",
                                      labels=["node", "hostname"])  # fmt: skip
        for node_id, facts in sorted(state.nodes.items()):
            total.add_metric([node_id, facts.hostname], facts.memory_total)
            available.add_metric([node_id, facts.hostname], facts.memory_available)
        yield total
        yield available
        ready = GaugeMetricFamily("exo_instance_ready", "1 when every runner of an instance is ready",
                                  labels=["instance", "model"])  # fmt: skip
        for instance_id, instance in sorted(state.instances.items()):
            ready.add_metric([instance_id, instance.model_id], 1 if state.instance_ready(instance_id) else 0)
        yield ready


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    return Response(request.app.state.gateway.metrics.render(), media_type=CONTENT_TYPE_LATEST)


def route_of(scope: dict) -> str:
    """The route's template (/instances/{instance_id}), not the path: a label must not grow with ids."""
    return getattr(scope.get("route"), "path", None) or "unmatched"


class CountResponses:
    """Counts every HTTP response by method, route and status. Plain ASGI, not BaseHTTPMiddleware: that one
    would stand between the endpoints and `request.is_disconnected()` (the non-streaming path polls it)."""

    def __init__(self, app) -> None:  # noqa: ANN001 - an ASGI app
        self.app = app

    async def __call__(self, scope, receive, send) -> None:  # noqa: ANN001
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # an exception that escapes every handler ends as a 500

        async def send_and_see(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_see)
        finally:
            gateway = getattr(scope["app"].state, "gateway", None)
            if gateway is not None:
                gateway.metrics.http.labels(scope["method"], route_of(scope), str(status)).inc()
