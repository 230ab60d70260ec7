"""docker compose cannot run here (no engine): the dev cluster file is checked as data."""

from __future__ import annotations

from pathlib import Path

import yaml

from services.node.cli import node_parser

COMPOSE = Path(__file__).resolve().parents[3] / "docker-compose.dev.yml"


def test_dev_cluster_is_nats_plus_three_nodes_whose_commands_parse() -> None:
    spec = yaml.safe_load(COMPOSE.read_text())
    services = spec["services"]
    assert set(services) == {"nats", "node1", "node2", "node3"}
    assert "--jetstream" in services["nats"]["command"]
    masters = 0
    for name in ("node1", "node2", "node3"):
        command = services[name]["command"]
        assert command[0] == "exo"
        args = node_parser().parse_args(command[1:])
        assert args.nats_url == "nats://nats:4222"
        assert args.memory
        masters += not args.no_master
        assert services[name]["depends_on"] == ["nats"]
    assert masters == 3  # every node may lead: election picks one
