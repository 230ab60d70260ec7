"""The dashboard's pure parts on plain data: the request meter's series, and the cluster view the feed pushes."""

from __future__ import annotations

import httpx

from shared.apply import apply
from shared.events import (
    Instance,
    InstancePlaced,
    LeaderElected,
    NodeFactsRecorded,
    NodeLost,
    RunnerStatusChanged,
    ShardAssignment,
)
from shared.facts import Link
from shared.ids import InstanceId, NodeId
from shared.state import ClusterState

from services.gateway.app import create_app
from services.gateway.dashboard.meter import Meter
from services.gateway.dashboard.view import cluster_view, links_view
from tests.unit.factories import GiB, facts

T0 = 1_000_000.0  # a whole multiple of every step below, so steps line up with the clock


# --- the meter ----------------------------------------------------------------------------------


def test_a_request_waits_then_is_in_flight_then_ends():
    meter = Meter(window_s=60)
    meter.started(T0)
    assert (meter.waiting, meter.in_flight) == (1, 0)
    meter.first_token(T0 + 0.25, ttft_s=0.25)
    assert (meter.waiting, meter.in_flight) == (0, 1)
    meter.ended(T0 + 1, had_first_token=True)
    assert (meter.waiting, meter.in_flight, meter.completed) == (0, 0, 1)


def test_a_request_that_fails_before_its_first_token_leaves_the_waiting_count():
    meter = Meter(window_s=60)
    meter.started(T0)
    meter.ended(T0 + 0.1, had_first_token=False)
    assert (meter.waiting, meter.in_flight, meter.completed) == (0, 0, 1)


def test_series_gives_tokens_per_second_and_mean_ttft_per_step():
    meter = Meter(window_s=60)
    meter.started(T0)
    meter.started(T0)
    for ttft in (0.1, 0.3):
        meter.first_token(T0 + ttft, ttft)
    meter.tokens(T0 + 1, 50)
    meter.tokens(T0 + 4, 50)  # 100 tokens in the step [T0, T0+5): 20 tokens/s
    s = meter.series(T0 + 20, step_s=5)
    assert len(s["tokens_per_s"]) == len(s["ttft_ms"]) == 12  # 60 s in steps of 5
    step = s["tokens_per_s"].index(20.0)
    assert s["ttft_ms"][step] == 200.0  # the mean of 100 and 300 ms
    assert s["ttft_ms"][step + 1] is None  # no request began to answer then
    assert s["tokens_per_s"][step + 1] == 0.0
    assert s["in_flight_series"][step] == 2 and s["in_flight_series"][-1] == 2  # carried through quiet steps
    assert s["waiting_series"][step] == 2  # both waited at once before their first tokens


def test_samples_older_than_the_window_drop_out():
    meter = Meter(window_s=60)
    meter.tokens(T0, 600)
    assert 120.0 in meter.series(T0 + 10, step_s=5)["tokens_per_s"]
    assert set(meter.series(T0 + 120, step_s=5)["tokens_per_s"]) == {0.0}  # the ring slot is reused, not read


# --- the cluster view ---------------------------------------------------------------------------


def two_node_state() -> ClusterState:
    a, b = NodeId("node-a"), NodeId("node-b")
    events = [
        LeaderElected(a, 3),
        NodeFactsRecorded(facts(a, links=(Link("node-b", 0.4),))),
        NodeFactsRecorded(facts(b, memory_available=4 * GiB, links=(Link("node-a", 0.6), Link("gone", 1.0)))),
        InstancePlaced(Instance(InstanceId("inst-1"), "smollm2-135m", "pipeline", "ring",
                                (ShardAssignment(a, 0, 0, 20), ShardAssignment(b, 1, 20, 30)),
                                {"node-a": 60_000_000, "node-b": 30_000_000})),  # fmt: skip
        RunnerStatusChanged(InstanceId("inst-1"), a, 0, "ready"),
        RunnerStatusChanged(InstanceId("inst-1"), b, 1, "failed", detail="out of memory"),
    ]
    state = ClusterState()
    for seq, event in enumerate(events, 1):
        state = apply(state, event, seq)
    return state


def test_view_shows_nodes_leader_links_and_layers_per_node():
    view = cluster_view(two_node_state(), {})
    assert view["leader"] == {"node_id": "node-a", "term": 3, "hostname": "host-node-a"}
    assert [(n["node_id"], n["leader"], n["memory_used"]) for n in view["nodes"]] == [
        ("node-a", True, 8 * GiB), ("node-b", False, 12 * GiB)]  # fmt: skip
    assert view["links"] == [{"a": "node-a", "b": "node-b", "latency_ms": 0.4}]  # the lower side; "gone" not drawn
    (inst,) = view["instances"]
    assert inst["status"] == "failed" and inst["layers"] == 30
    assert [(s["hostname"], s["start_layer"], s["end_layer"], s["phase"]) for s in inst["shards"]] == [
        ("host-node-a", 0, 20, "ready"), ("host-node-b", 20, 30, "failed")]  # fmt: skip
    assert inst["shards"][1]["detail"] == "out of memory"


def test_live_facts_give_the_numbers_but_the_log_decides_who_is_shown():
    state = two_node_state()
    live = {"node-a": facts(NodeId("node-a"), memory_available=1 * GiB), "stranger": facts(NodeId("stranger"))}
    view = cluster_view(state, live)
    assert [n["node_id"] for n in view["nodes"]] == ["node-a", "node-b"]
    assert view["nodes"][0]["memory_used"] == 15 * GiB
    lost = apply(state, NodeLost(NodeId("node-b"), "no facts for 10 s"), 99)
    assert [n["node_id"] for n in cluster_view(lost, live)["nodes"]] == ["node-a"]


def test_a_link_seen_from_one_side_only_is_still_drawn():
    f = {"x": facts(NodeId("x"), links=(Link("y", 2.5),)), "y": facts(NodeId("y"))}
    assert links_view(f) == [{"a": "x", "b": "y", "latency_ms": 2.5}]


# --- the routes, without a bus (no lifespan: the page and its guard need none) ---------------------


async def _get(app, path: str, headers: dict | None = None):  # noqa: ANN001, ANN202
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        return await client.get(path, headers=headers or {})


async def test_the_page_and_its_files_are_served_open_and_nothing_else():
    app = create_app("nats://127.0.0.1:1", "node-test", api_key="k")
    page = await _get(app, "/dashboard")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="/dashboard/static/app.js">' in page.text  # relative to the gateway's origin
    script = await _get(app, "/dashboard/static/app.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    for name in ("routes.py", "..%2Froutes.py", "nope.js"):
        assert (await _get(app, f"/dashboard/static/{name}")).status_code == 404, name


async def test_the_feed_needs_the_key_when_one_is_set():
    app = create_app("nats://127.0.0.1:1", "node-test", api_key="k")
    answer = await _get(app, "/dashboard/feed")
    assert answer.status_code == 401 and answer.json()["error"]["code"] == "invalid_api_key"
