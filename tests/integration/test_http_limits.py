"""The gateway's HTTP surface on a real node: the body limit, errors that keep the connection, OpenAI-shaped
404/405/400 answers, and min_nodes checked by the gateway and by the master's bus command."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import nats
import pytest

from shared import subjects
from shared.commands import CommandReply, PlaceInstance, PreviewPlacements, PreviewReply, decode, encode
from tests.conftest import MODEL, Node
from tests.integration.test_errors import assert_openai_error

pytestmark = pytest.mark.slow

LIMIT = 8 * 1024 * 1024  # the default --max-body-bytes


@pytest.fixture
def http(node: Node) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=node.base_url, timeout=120) as client:
        yield client


def connection(response: httpx.Response) -> tuple[str, int]:
    """The client's end of the TCP connection that carried the response: the same one means keep-alive held."""
    return response.extensions["network_stream"].get_extra_info("client_addr")


def still_serves(http: httpx.Client, first: httpx.Response) -> None:
    """A real completion on the same keep-alive connection as `first`."""
    answer = http.post("/v1/completions", json={"model": MODEL, "prompt": "The capital of France is", "max_tokens": 3,
                                                "temperature": 0})  # fmt: skip
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["text"]
    assert connection(answer) == connection(first), "the server closed the connection"


def test_body_over_the_limit_is_413_and_the_connection_serves_on(http: httpx.Client) -> None:
    first = http.get("/health")
    body = b'{"model": "%s", "prompt": "' % MODEL.encode() + b"a" * (10 * 1024 * 1024) + b'"}'
    response = http.post("/v1/completions", content=body, headers={"content-type": "application/json"})
    error = assert_openai_error(response, 413)
    assert error["code"] == "request_too_large" and str(LIMIT) in error["message"]
    assert connection(response) == connection(first)
    still_serves(http, first)


def test_chunked_body_over_the_limit_is_413_and_the_connection_serves_on(http: httpx.Client) -> None:
    first = http.get("/health")

    def chunks() -> Iterator[bytes]:  # no Content-Length: the gateway counts the bytes as they come
        yield b'{"model": "%s", "messages": [{"role": "user", "content": "' % MODEL.encode()
        for _ in range(100):
            yield b"a" * 100_000

    response = http.post("/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"})
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert assert_openai_error(response, 413)["code"] == "request_too_large"
    still_serves(http, first)


def test_a_large_body_within_the_limit_answers_in_openai_shape_and_keeps_the_connection(http: httpx.Client) -> None:
    """1.5 MB: more than the bus carries in one message. Whatever the answer, it is OpenAI's error JSON or a
    completion, and the keep-alive connection serves the next request (an unhandled error used to close it)."""
    first = http.get("/health")
    response = http.post("/v1/completions", json={"model": MODEL, "prompt": "word " * 300_000, "max_tokens": 2})
    if response.status_code != 200:
        assert_openai_error(response, response.status_code)
    still_serves(http, first)


@pytest.mark.parametrize("method,path", [("PUT", "/v1/models"), ("GET", "/v1/chat/completions"),
                                         ("PATCH", "/instances"), ("POST", "/health")])  # fmt: skip
def test_wrong_method_is_405_in_openai_shape(http: httpx.Client, method: str, path: str) -> None:
    response = http.request(method, path)
    error = assert_openai_error(response, 405)
    assert error["code"] == "method_not_allowed"
    assert response.headers["allow"]


@pytest.mark.parametrize("query,param", [("min_nodes=abc", "min_nodes"), ("min_nodes=0", "min_nodes"),
                                         ("max_nodes=-1", "max_nodes"), ("", "model")])  # fmt: skip
def test_bad_query_parameters_are_400_naming_them(http: httpx.Client, query: str, param: str) -> None:
    error = assert_openai_error(http.get(f"/instances/preview?{query}" + ("&model=" + MODEL if query else "")), 400)
    assert error["param"] == param and error["type"] == "invalid_request_error"


@pytest.mark.parametrize("min_nodes", [0, -1])
def test_create_instance_with_min_nodes_below_one_is_400(http: httpx.Client, node: Node, min_nodes: int) -> None:
    before = http.get("/instances").json()["instances"]
    error = assert_openai_error(http.post("/instances", json={"model": MODEL, "min_nodes": min_nodes}), 400)
    assert error["param"] == "min_nodes" and "min_nodes" in error["message"]
    assert http.get("/instances").json()["instances"] == before


async def test_the_master_refuses_min_nodes_below_one_from_the_bus(node: Node) -> None:
    """Commands come from any bus client, not only the gateway: the master checks too."""
    nc = await nats.connect(node.nats_url)
    try:
        for min_nodes in (0, -1):
            msg = await nc.request(subjects.CMD_PLACE_INSTANCE, encode(PlaceInstance(MODEL, min_nodes=min_nodes)), timeout=10)
            reply = decode(msg.data, CommandReply)
            assert not reply.ok and reply.instance_id is None
            assert reply.error == f"min_nodes must be at least 1, not {min_nodes}"
        msg = await nc.request(subjects.CMD_PREVIEW, encode(PreviewPlacements(MODEL, min_nodes=0)), timeout=10)
        preview = decode(msg.data, PreviewReply)
        assert not preview.ok and "min_nodes" in (preview.error or "")
    finally:
        await nc.close()
    assert len(node.health()["ready_instances"]) == 1


def test_openapi_describes_the_request_bodies(http: httpx.Client) -> None:
    doc = http.get("/openapi.json").json()
    body = doc["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/ChatCompletionRequest"}
    assert "messages" in doc["components"]["schemas"]["ChatCompletionRequest"]["properties"]
