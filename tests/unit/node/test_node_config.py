"""`exo`'s flags as one NodeConfig, and the spec each service gets from it (services/node/node_config.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.node.node_config import NOT_FROM_ENVIRONMENT, node_config, node_parser, service_specs
from shared.config import parse_with_environment
from shared.specs import DiscoverySpec, GatewaySpec, RunnerSettings, WorkerSpec


def config_of(argv: list[str]):  # noqa: ANN201 - NodeConfig
    ns, found = parse_with_environment(node_parser(), argv, NOT_FROM_ENVIRONMENT)
    return node_config(ns, found)


def test_flags_and_variables_end_in_the_services_specs(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"EXO_CPU_FUSION": "off", "EXO_KERNEL_THREADS": "2", "EXO_HOSTNAME": "ns-a",
                        "EXO_PORT": "9999", "EXO_MAX_BATCH": "3"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    config = config_of(["--max-batch", "2", "--port", "18080", "--memory", "1GB", "--no-master", "--ring-wait", "spin"])
    specs = service_specs(config, Path("/s"), "nats://127.0.0.1:14222", 6222, 1234)
    assert set(specs) == {"discovery", "worker", "gateway"}
    worker, gateway, discovery = specs["worker"], specs["gateway"], specs["discovery"]
    assert isinstance(worker, WorkerSpec) and isinstance(gateway, GatewaySpec) and isinstance(discovery, DiscoverySpec)
    # a flag wins over its variable; EXO_PORT never set exo's port (the node set it for its gateway)
    assert worker.runner == RunnerSettings(max_batch=2, ring_wait="spin", cpu_fusion="off", kernel_threads=2)
    assert gateway.port == 18080 and gateway.common.state_dir == Path("/s")
    assert (discovery.hostname, discovery.memory, discovery.route_port, discovery.roles) == (
        "ns-a", 10**9, 6222, ("worker", "gateway"))  # fmt: skip
    assert {s.common.supervisor_pid for s in specs.values()} == {1234}


@pytest.mark.parametrize(("argv", "field"), [(["--cpu-fusion", "maybe"], "cpu_fusion"),
                                              (["--max-batch", "0"], "max-batch"), (["--memory", "lots"], "size")])  # fmt: skip
def test_a_bad_value_names_its_flag(argv: list[str], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        config_of(argv)


def test_a_bad_variable_is_refused_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXO_RING_WAIT", "poll")
    with pytest.raises(ValueError, match="ring_wait"):
        config_of([])
