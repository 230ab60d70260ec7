"""exo doctor's checks on plain facts: each row passes on a healthy node and fails with its advice."""

from __future__ import annotations

import pytest

from services.node.doctor_cli import render
from services.node.doctor_checks import Facts, Row, all_pass, diagnose

GiB = 1 << 30
RUNNER_OK = {"phase": "ready", "detail": ""}
INSTANCE = {"instance_id": "inst-1", "model_id": "smollm2-135m", "strategy": "pipeline", "backend": "ring",
            "shards": [{"node_id": "node-a"}], "ready": True, "runners": [RUNNER_OK]}  # fmt: skip
HEALTHY = Facts(
    health={"master": "node-a", "leader_term": 1},
    instances=[INSTANCE],
    node_memory=[{"node_id": "node-a", "total": 8 * GiB, "held": GiB, "free": 7 * GiB}],
    peers_age_s=1.0,
    local_node="node-a",
    local_backends=["ring"],
    machine_total=16 * GiB,
    machine_available=8 * GiB,
    runner_ring_wait=[""],
    runner_blas=["mkl"],
    disk_free={"/state/models": 50 * GiB},
)


def row(facts: Facts, check: str) -> Row:
    return next(r for r in diagnose(facts) if r.check == check)


def with_(**changes: object) -> Facts:
    import msgspec

    return msgspec.structs.replace(HEALTHY, **changes)


def test_a_healthy_single_node_passes_every_row() -> None:
    rows = diagnose(HEALTHY)
    assert all_pass(rows), rows
    assert row(HEALTHY, "RDMA").status == "n/a"  # no RDMA here is not a fault
    assert [r.check for r in rows] == ["bus", "leader", "peers discovered", "clock skew", "RDMA", "memory",
                                       "inference speed", "model loading"]  # fmt: skip


@pytest.mark.parametrize(
    ("changes", "check", "detail", "advice"),
    [
        ({"bus_error": "the bus refused our credentials (Authorization Violation)"}, "bus", "refused", "cluster secret"),
        ({"bus_error": "nats://127.0.0.1:4222: no answer in 5 s"}, "bus", "no answer", "start the node"),
        ({"jetstream_error": "NotFoundError"}, "bus", "JetStream", "-js"),
        ({"peers": [{"node_id": "node-b", "hostname": "b", "route_port": 6222}]}, "bus", "routes to 0 of the 1", "restart"),
        ({"offline_replicas": ["exo-node-b"]}, "bus", "offline on exo-node-b", "route port"),
        ({"health": None, "gateway_error": "connection refused"}, "leader", "does not answer", "--url"),
        ({"health": {"master": None}}, "leader", "no master", "master.log"),
        ({"peers_age_s": None}, "peers discovered", "discovery is not running", "discovery.log"),
        ({"peers_age_s": 60.0}, "peers discovered", "60 s old", "restart"),
        ({"rejections": ["bad mac (from 10.0.0.2:52416)"]}, "peers discovered", "bad mac", "--cluster-secret"),
        ({"rejections": ["clock skew: b is +45 s off our clock (from x)"]}, "clock skew", "+45 s", "NTP"),
        ({"instances": [INSTANCE | {"backend": "jaccl"}]}, "RDMA", "jaccl was asked", "--backend ring"),
        ({"thunderbolt": ["thunderbolt0"], "ibv_devices": []}, "RDMA", "ibv_devices", "rdma_ctl enable"),
        ({"ibv_devices": ["rdma_en2"]}, "RDMA", "no jaccl", "install an mlx"),
        ({"node_memory": [{"node_id": "node-a", "total": GiB, "held": 2 * GiB, "free": 0}]}, "memory", "holds", "min_nodes"),
        ({"instances": [INSTANCE | {"ready": False, "runners": [{"phase": "failed", "detail": "MemoryError"}]}]},
         "memory", "MemoryError", "--max-batch"),
        ({"machine_available": GiB // 2}, "memory", "free on this machine", "--memory"),
        ({"runner_ring_wait": ["spin"]}, "inference speed", "busy-poll", "EXO_RING_WAIT"),
        ({"runner_blas": ["reference"]}, "inference speed", "reference BLAS", "setup.sh"),
        ({"gateway_error": "HTTP Error 401: Unauthorized"}, "model loading", "401", "--api-key"),
        ({"disk_free": {"/state/models": 100 << 20}}, "model loading", "0.1 GiB free", "free space"),
        ({"instances": [INSTANCE | {"ready": False, "runners": [{"phase": "failed", "detail": "exit 4: no weights\nlog tail"}]}]},
         "model loading", "no weights", "runner's log"),
        ({"instances": [INSTANCE | {"ready": False, "runners": [None]}]}, "model loading", "not ready", "GET /instances"),
        ({"waiting": [{"model": "smollm2-135m", "reason": "needs 2 nodes"}]}, "model loading", "needs 2 nodes", "more nodes"),
    ],
)
def test_each_fault_fails_its_row_with_advice(changes: dict, check: str, detail: str, advice: str) -> None:
    facts = with_(**changes)
    got = row(facts, check)
    assert got.status == "fail", got
    assert detail in got.detail and advice in got.advice
    assert not all_pass(diagnose(facts))


def test_ring_where_every_node_has_jaccl_is_slow() -> None:
    two = INSTANCE | {"shards": [{"node_id": "node-a"}, {"node_id": "node-b"}]}
    peers = [{"node_id": "node-b", "backends": ["ring", "jaccl"], "route_port": 0}]
    assert row(with_(instances=[two], peers=peers), "inference speed").status == "pass"  # this node has no jaccl
    slow = row(with_(instances=[two], peers=peers, local_backends=["ring", "jaccl"], ibv_devices=["rdma_en2"]),
               "inference speed")  # fmt: skip
    assert slow.status == "fail" and "backend jaccl" in slow.advice


def test_reference_blas_chosen_with_the_flag_is_not_a_fault() -> None:
    assert row(with_(runner_blas=["reference"], blas_choice="reference"), "inference speed").status == "pass"


def test_peers_heard_are_named() -> None:
    facts = with_(peers=[{"node_id": "node-b", "hostname": "mac-b", "route_port": 6222}], routes=["10.0.0.2:6222"])
    assert row(facts, "peers discovered").detail == "1 peer(s): mac-b" and all_pass(diagnose(facts))


def test_render_shows_advice_only_for_failures() -> None:
    text = render(diagnose(with_(health={"master": None})))
    assert "FAIL  leader" in text and "-> check the master service" in text
    assert "1 check(s) fail" in text.splitlines()[-1]
    assert render(diagnose(HEALTHY)).splitlines()[-1] == "all checks pass"


def test_a_failed_runner_is_named_by_the_first_line_of_its_detail() -> None:
    failed = INSTANCE | {"ready": False, "runners": [{"phase": "failed", "detail": "exited with code -9: \nlog line"}]}
    assert row(with_(instances=[failed]), "model loading").detail == "a runner failed: exited with code -9: "
