"""/health follows what is placed (degraded with reasons until every placed model is ready), and the API key
(every route but /health and the schema needs it; it is on no process's command line). One real node."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator

import httpx
import psutil
import pytest

from tests.conftest import MODEL, Node
from tests.integration.test_errors import assert_openai_error

pytestmark = pytest.mark.slow

KEY = "sk-test-" + "7f" * 16


@pytest.fixture(scope="module")
def keyed_node(start_node: Callable[..., Node], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    key_file = tmp_path_factory.mktemp("key") / "api-key"
    key_file.write_text(KEY + "\n")
    n = start_node("keyed", "--no-model", "--api-key-file", str(key_file))
    yield n
    n.stop()


def authed(node: Node, **headers: str) -> httpx.Client:
    return httpx.Client(base_url=node.base_url, timeout=60, headers=headers)


@pytest.mark.parametrize("method,path", [("GET", "/v1/models"), ("POST", "/v1/chat/completions"),
                                         ("POST", "/v1/completions"), ("GET", "/instances"),
                                         ("GET", "/instances/preview?model=smollm2-135m"), ("POST", "/instances"),
                                         ("DELETE", "/instances/inst-x")])  # fmt: skip
def test_api_routes_need_the_key(keyed_node: Node, method: str, path: str) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"x-api-key": "wrong"}, {"Authorization": f"Basic {KEY}"}):
        with authed(keyed_node, **headers) as http:
            response = http.request(method, path, json={"model": MODEL})
        error = assert_openai_error(response, 401)
        assert error["code"] == "invalid_api_key", headers
        assert response.headers["www-authenticate"] == "Bearer"


def test_the_key_opens_them_either_way(keyed_node: Node) -> None:
    for headers in ({"Authorization": f"Bearer {KEY}"}, {"x-api-key": KEY}):
        with authed(keyed_node, **headers) as http:
            assert http.get("/v1/models").status_code == 200
            assert http.get("/instances").status_code == 200
            # past the key, the route's own checks answer
            assert assert_openai_error(http.post("/instances", json={"model": MODEL, "min_nodes": 0}), 400)


def test_health_and_schema_stay_open(keyed_node: Node) -> None:
    assert httpx.get(f"{keyed_node.base_url}/health", timeout=10).status_code == 200
    doc = httpx.get(f"{keyed_node.base_url}/openapi.json", timeout=10).json()
    assert set(doc["components"]["securitySchemes"]) == {"HTTPBearer", "APIKeyHeader"}


def test_the_key_is_on_no_command_line_and_only_in_the_gateways_environment(keyed_node: Node) -> None:
    pids = keyed_node.pids()
    for proc in keyed_node.process_tree():
        assert KEY not in " ".join(proc.cmdline()), proc.cmdline()
    assert psutil.Process(pids["gateway"]).environ().get("EXO_API_KEY") == KEY
    for service in ("supervisor", "master", "worker", "discovery"):
        assert "EXO_API_KEY" not in psutil.Process(pids[service]).environ(), service


def test_health_is_degraded_until_every_placed_model_is_ready(keyed_node: Node) -> None:
    node = keyed_node
    health = node.wait_until(lambda h: h["master"] is not None and h["nodes"], 30, "master and node facts")
    assert (health["status"], health["reasons"]) == ("ok", [])  # nothing placed: nothing missing
    with authed(node, Authorization=f"Bearer {KEY}") as http:
        created = http.post("/instances", json={"model": MODEL})
        assert created.status_code == 201, created.text
        instance_id = created.json()["instance_id"]
        health = node.health()
        if not health["ready_instances"]:
            assert health["status"] == "degraded"
            assert any(instance_id in r and "not ready" in r for r in health["reasons"]), health
        node.wait_until(lambda h: h["status"] == "ok", 180, "status ok once the instance is ready")

        # a runner killed: degraded (failed, then loading) until the worker has it ready again
        (runner,) = node.runner_pids()
        os.kill(runner, signal.SIGKILL)
        seen = node.wait_until(lambda h: h["status"] == "degraded", 20, "degraded after the runner died")
        assert any(instance_id in r for r in seen["reasons"]), seen
        assert "[info" not in str(seen["reasons"])  # /health is open: no runner log lines in it
        node.wait_until(lambda h: h["status"] == "ok" and h["ready_instances"] == [instance_id], 180, "ok again")
        answer = http.post("/v1/completions", json={"model": MODEL, "prompt": "Hello", "max_tokens": 2})
        assert answer.status_code == 200, answer.text
