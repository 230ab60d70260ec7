"""The gateway's HTTP surface, as plain data: error shapes, the body limit, /openapi.json, the API key, /health."""

from __future__ import annotations

import asyncio
import json

import msgspec
import pytest
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from services.gateway.api_key import BadApiKey, exposure_warning, is_loopback, key_matches, resolve_api_key
from services.gateway.app import create_app
from services.gateway.errors import (
    ErrorResponse,
    OpenAIError,
    bad_request,
    from_http_exception,
    from_validation_error,
    internal_error,
)
from services.gateway.health import degraded_reasons, health_report, short_detail
from services.gateway.middleware import BodyLimit, ErrorsAsJSON, declared_length
from shared.apply import apply
from shared.events import Instance, InstanceAwaitingNodes, InstancePlaced, LeaderElected, RunnerStatusChanged, ShardAssignment
from shared.state import ClusterState

ERROR_KEYS = {"message", "type", "param", "code"}


# --- error shapes -------------------------------------------------------------------------------


@pytest.mark.parametrize("err", [bad_request("x", "p"), internal_error(RuntimeError("boom")), OpenAIError(413, "big")])
def test_every_error_body_is_the_declared_error_response(err):
    assert msgspec.convert(err.body(), ErrorResponse).error.message == err.message
    assert set(err.body()["error"]) == ERROR_KEYS


def test_unknown_route_is_404_not_found():
    err = from_http_exception("GET", "/nope", HTTPException(404))
    assert (err.status, err.code, err.message) == (404, "not_found", "no route GET /nope")


def test_wrong_method_is_405_with_allow():
    err = from_http_exception("PUT", "/v1/models", HTTPException(405, headers={"Allow": "GET"}))
    assert err.status == 405 and err.code == "method_not_allowed" and err.type == "invalid_request_error"
    assert "GET" in err.message and "PUT" in err.message
    assert err.headers == {"Allow": "GET"}  # RFC 9110: a 405 says what is allowed


def test_other_http_exceptions_keep_status_and_detail():
    err = from_http_exception("GET", "/x", HTTPException(503, "busy"))
    assert (err.status, err.message, err.type) == (503, "busy", "server_error")


def test_query_validation_error_is_400_naming_the_parameter():
    exc = RequestValidationError([{"loc": ("query", "min_nodes"), "msg": "Input should be a valid integer"}])
    err = from_validation_error(exc)
    assert err.status == 400 and err.param == "min_nodes"
    assert "query.min_nodes" in err.message and "valid integer" in err.message


# --- the ASGI middleware, driven with ASGI messages ---------------------------------------------


def scope(headers: list[tuple[bytes, bytes]] = ()) -> dict:
    return {"type": "http", "method": "POST", "path": "/v1/completions", "headers": list(headers)}


def run_asgi(app, scope_: dict, chunks: list[bytes]) -> tuple[list[dict], int]:
    """Call an ASGI app with a body in chunks; returns what it sent and how many chunks it read."""
    sent: list[dict] = []
    pending = list(chunks)

    async def receive() -> dict:
        body = pending.pop(0)
        return {"type": "http.request", "body": body, "more_body": bool(pending)}

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(app(scope_, receive, send))
    return sent, len(chunks) - len(pending)


async def read_all_then_ok(scope_, receive, send) -> None:
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def status_and_error(sent: list[dict]) -> tuple[int, dict]:
    return sent[0]["status"], json.loads(sent[1]["body"])["error"]


@pytest.mark.parametrize("headers,expected", [([], None), ([(b"content-length", b"12")], 12),
                                              ([(b"content-length", b"x")], None)])  # fmt: skip
def test_declared_length(headers, expected):
    assert declared_length(scope(headers)) == expected


def test_declared_length_over_limit_answered_without_reading():
    app = ErrorsAsJSON(BodyLimit(read_all_then_ok, max_bytes=10))
    sent, read = run_asgi(app, scope([(b"content-length", b"11")]), [b"x" * 11])
    status, error = status_and_error(sent)
    assert (status, error["code"], read) == (413, "request_too_large", 0)
    assert "11 bytes" in error["message"] and "10 bytes" in error["message"]


def test_chunked_body_stops_at_the_first_chunk_over_the_limit():
    app = ErrorsAsJSON(BodyLimit(read_all_then_ok, max_bytes=10))
    sent, read = run_asgi(app, scope(), [b"x" * 4, b"x" * 4, b"x" * 4, b"x" * 4, b"x" * 4])
    assert status_and_error(sent)[0] == 413
    assert read == 3  # 12 bytes: over; the last two chunks are never asked for


def test_body_at_the_limit_passes():
    app = ErrorsAsJSON(BodyLimit(read_all_then_ok, max_bytes=10))
    sent, _ = run_asgi(app, scope([(b"content-length", b"10")]), [b"x" * 5, b"x" * 5])
    assert sent[0]["status"] == 200


def test_unhandled_error_becomes_500_and_is_not_raised():
    async def broken(scope_, receive, send) -> None:
        raise RuntimeError("boom")

    sent, _ = run_asgi(ErrorsAsJSON(broken), scope(), [b""])
    status, error = status_and_error(sent)
    assert (status, error["type"], error["code"]) == (500, "server_error", "internal_error")
    assert "RuntimeError: boom" in error["message"]


def test_error_in_a_started_event_stream_ends_it_with_an_error_event():
    async def stream_then_break(scope_, receive, send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        await send({"type": "http.response.body", "body": b"data: {}\n\n", "more_body": True})
        raise RuntimeError("lost")

    sent, _ = run_asgi(ErrorsAsJSON(stream_then_break), scope(), [b""])
    last = sent[-1]
    assert last["more_body"] is False
    event = json.loads(last["body"].decode().removeprefix("data: "))
    assert set(event["error"]) == ERROR_KEYS and "lost" in event["error"]["message"]


def test_error_in_a_started_json_answer_is_raised():
    async def half_sent(scope_, receive, send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        raise RuntimeError("half")

    with pytest.raises(RuntimeError):
        run_asgi(ErrorsAsJSON(half_sent), scope(), [b""])


# --- /openapi.json ------------------------------------------------------------------------------


def refs(node) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if "$ref" in node else []
        return own + [r for v in node.values() for r in refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in refs(v)]
    return []


@pytest.fixture(scope="module")
def doc() -> dict:
    return create_app("nats://127.0.0.1:1", "node-test").openapi()


def test_every_reference_resolves(doc):
    schemas = doc["components"]["schemas"]
    for ref in refs(doc):
        assert ref.startswith("#/components/schemas/") and ref.split("/")[-1] in schemas, ref


@pytest.mark.parametrize("path,body", [("/v1/chat/completions", "ChatCompletionRequest"),
                                       ("/v1/completions", "CompletionRequest"), ("/instances", "CreateInstance")])  # fmt: skip
def test_request_bodies_are_described(doc, path, body):
    content = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]
    assert content["schema"] == {"$ref": f"#/components/schemas/{body}"}
    assert "model" in doc["components"]["schemas"][body]["required"]


def test_errors_are_described_in_openai_shape_and_no_422(doc):
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            assert "422" not in responses, (method, path)
            if path != "/health":
                assert responses["4XX"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")


def test_min_nodes_minimum_is_described(doc):
    assert doc["components"]["schemas"]["CreateInstance"]["properties"]["min_nodes"]["minimum"] == 1
    preview = {p["name"]: p for p in doc["paths"]["/instances/preview"]["get"]["parameters"]}
    assert preview["min_nodes"]["schema"]["minimum"] == 1


def test_api_key_is_described_only_when_set(doc):
    assert "securitySchemes" not in doc["components"]
    keyed = create_app("nats://127.0.0.1:1", "node-test", api_key="k").openapi()
    assert set(keyed["components"]["securitySchemes"]) == {"HTTPBearer", "APIKeyHeader"}
    assert keyed["paths"]["/v1/chat/completions"]["post"]["security"]
    assert "security" not in keyed["paths"]["/health"]["get"]


# --- the API key ----------------------------------------------------------------------------------


def test_resolve_api_key(tmp_path):
    assert resolve_api_key(None, None) is None
    assert resolve_api_key("sk-1", None) == "sk-1"
    key_file = tmp_path / "key"
    key_file.write_text("sk-2\n")
    assert resolve_api_key(None, key_file) == "sk-2"
    for key, path in [("a", key_file), (None, tmp_path / "missing"), (" a", None)]:
        with pytest.raises(BadApiKey):
            resolve_api_key(key, path)
    key_file.write_text("\n")
    with pytest.raises(BadApiKey, match="empty"):
        resolve_api_key(None, key_file)


def test_key_matches_either_header():
    assert key_matches("k", "k", None) and key_matches("k", None, "k") and key_matches("k", "wrong", "k")
    assert not key_matches("k", None, None) and not key_matches("k", "K", "k2")


@pytest.mark.parametrize("host,loopback", [("127.0.0.1", True), ("127.1.2.3", True), ("::1", True),
                                           ("[::1]", True), ("localhost", True), ("0.0.0.0", False),
                                           ("::", False), ("192.168.1.5", False), ("myhost", False)])  # fmt: skip
def test_exposure_warning(host, loopback):
    assert is_loopback(host) == loopback
    assert (exposure_warning(host, has_key=False) is None) == loopback
    assert exposure_warning(host, has_key=True) is None


# --- /health --------------------------------------------------------------------------------------


def shards(*nodes: str) -> tuple[ShardAssignment, ...]:
    return tuple(ShardAssignment(n, r, r * 10, (r + 1) * 10) for r, n in enumerate(nodes))


def state_of(*events) -> ClusterState:
    state = apply(ClusterState(), LeaderElected("node-a", 1))
    for e in events:
        state = apply(state, e)
    return state


PLACED = InstancePlaced(Instance("inst-1", "smollm2-135m", "pipeline", "ring", shards("node-a", "node-b")))
SECOND = InstancePlaced(Instance("inst-2", "smollm2-135m", "pipeline", "ring", shards("node-a")))


def ready(iid: str, rank: int, node: str) -> RunnerStatusChanged:
    return RunnerStatusChanged(iid, node, rank, "ready")


def test_ok_with_nothing_placed_and_with_every_model_ready():
    assert degraded_reasons(state_of(), True) == []
    state = state_of(PLACED, ready("inst-1", 0, "node-a"), ready("inst-1", 1, "node-b"))
    report = health_report(state, True)
    assert report["status"] == "ok" and report["reasons"] == [] and report["ready_instances"] == ["inst-1"]


def test_runners_not_ready_say_what_each_rank_does():
    state = state_of(PLACED, RunnerStatusChanged("inst-1", "node-a", 0, "loading", "layers 0-10", 0.5))
    (reason,) = degraded_reasons(state, True)
    assert reason == ("instance inst-1 of smollm2-135m not ready: rank 0 on node-a: loading 50% (layers 0-10); "
                      "rank 1 on node-b: waiting for its worker")  # fmt: skip
    assert health_report(state, True)["status"] == "degraded"


def test_a_loading_second_instance_is_not_degraded_when_one_serves():
    state = state_of(PLACED, ready("inst-1", 0, "node-a"), ready("inst-1", 1, "node-b"), SECOND)
    assert degraded_reasons(state, True) == []


def test_a_failed_instance_is_degraded_even_when_another_serves():
    failed = RunnerStatusChanged("inst-2", "node-a", 0, "failed", "runner exited with code -9: 12:00 [info] req-1 done\nmore")
    state = state_of(PLACED, ready("inst-1", 0, "node-a"), ready("inst-1", 1, "node-b"), SECOND, failed)
    (reason,) = degraded_reasons(state, True)
    assert reason.startswith("instance inst-2 of smollm2-135m failed: rank 0 on node-a: failed")
    assert "req-1" not in reason  # /health is open: a runner's log lines stay in GET /instances


def test_a_model_waiting_for_nodes_is_degraded():
    waiting = InstanceAwaitingNodes("inst-9", "smollm2-135m", "pipeline", "ring", "needs 2 nodes, 1 joined")
    (reason,) = degraded_reasons(state_of(waiting), True)
    assert reason == "smollm2-135m (was inst-9) is waiting for nodes: needs 2 nodes, 1 joined"


def test_no_bus_and_no_master_are_degraded():
    assert degraded_reasons(ClusterState(), False) == ["not connected to the bus", "no master has been elected"]


@pytest.mark.parametrize("detail,shown", [("out of memory", "out of memory"), ("a\nb", "details in GET /instances"),
                                          ("x" * 101, "details in GET /instances")])  # fmt: skip
def test_short_detail(detail, shown):
    assert short_detail(detail) == shown


def test_a_client_gone_is_not_answered():
    async def client_left(scope_, receive, send) -> None:
        raise ClientDisconnect()

    sent, _ = run_asgi(ErrorsAsJSON(client_left), scope(), [b""])
    assert sent == []
