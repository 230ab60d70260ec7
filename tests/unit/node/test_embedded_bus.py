"""The node's bus configuration (pure) and when the node reloads or re-forms its bus."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from shared.bus_roles import ROLES
from shared.cluster_secret import nats_client_credentials, nats_credentials, nats_route_credentials
from shared.peers import Peer, PeerTable

from services.node.embedded_bus import EmbeddedBus, base_config, peer_routes
from services.node.nats_server import render_config
from services.node.supervisor import Supervisor

SECRET = "ab" * 32


def config(tmp_path: Path, route_port: int = 6222):  # noqa: ANN201
    return base_config(tmp_path, "node-a", SECRET, "127.0.0.1", 4222, "0.0.0.0", route_port)


def peer(node_id: str, address: str, route_port: int, last_seen: float) -> Peer:
    return Peer(node_id, "h", address, 52416, route_port, 1, 1, ("ring",), last_seen)


def test_a_node_alone_runs_a_standalone_server_on_loopback_with_credentials(tmp_path: Path) -> None:
    text = render_config(config(tmp_path))
    assert 'listen: "127.0.0.1:4222"' in text
    for role in ROLES:  # one user per role, each with its own password and rights
        user, password = nats_credentials(SECRET, role)
        assert f'{{ user: "{user}", password: "{password}", permissions: {{ publish: {{ allow: [' in text
    assert 'user: "exo-operator"' in text and nats_client_credentials(SECRET) == nats_credentials(SECRET, "operator")
    assert "cluster" not in text  # JetStream cannot start clustered without a route
    assert str(tmp_path / "nats" / "standalone") in text


def test_a_node_with_peers_runs_a_clustered_server_whose_routes_carry_credentials(tmp_path: Path) -> None:
    import msgspec

    c = msgspec.structs.replace(config(tmp_path), routes=("10.0.0.2:6222", "10.0.0.3:6222"))
    text = render_config(c)
    user, password = nats_route_credentials(SECRET)
    assert f'nats-route://{user}:{password}@10.0.0.2:6222' in text
    assert f'nats-route://{user}:{password}@10.0.0.3:6222' in text
    assert 'listen: "0.0.0.0:6222"' in text
    assert str(tmp_path / "nats" / "cluster") in text  # the standalone log stays apart
    assert c.cluster_name == config(tmp_path / "other").cluster_name  # same secret, same cluster
    assert c.cluster_name != base_config(tmp_path, "n", "cd" * 32, "127.0.0.1", 1, "0.0.0.0", 2).cluster_name


def test_routes_come_from_peers_heard_since_the_start_and_taking_routes() -> None:
    table = PeerTable("me", 100.0, (
        peer("b", "10.0.0.2", 6222, 100.0),
        peer("c", "10.0.0.3", 0, 100.0),  # takes no routes
        peer("d", "10.0.0.4", 6222, 10.0),  # from the previous run's table
    ))  # fmt: skip
    assert peer_routes(table, since=50.0) == ("10.0.0.2:6222",)
    assert peer_routes(None, since=0.0) == ()


class FakeSupervisor(Supervisor):
    """Records what the bus asks of it; no process is started (the real one is in the integration tests)."""

    def __init__(self) -> None:
        super().__init__()
        self.started: list = []

    async def start(self, spec):  # noqa: ANN001, ANN201
        self.started.append(spec)


def test_first_peer_forms_the_cluster_and_later_peers_only_add_routes(tmp_path: Path) -> None:
    supervisor = FakeSupervisor()
    bus = EmbeddedBus(supervisor, tmp_path, config(tmp_path))
    asyncio.run(bus.start(()))
    assert not bus.clustered and supervisor.started[0].argv[-1].endswith("nats.conf")
    assert bus.apply_routes(()) == ""
    assert bus.apply_routes(("10.0.0.2:6222",)) == "formed"
    assert bus.clustered and "10.0.0.2:6222" in (tmp_path / "nats" / "nats.conf").read_text()
    assert bus.apply_routes(("10.0.0.2:6222",)) == ""
    assert bus.apply_routes(("10.0.0.3:6222",)) == "reloaded"
    # a peer that left keeps its route: nats-server retries it, and it is back when the peer returns
    assert bus.apply_routes(()) == ""
    assert bus.config.routes == ("10.0.0.2:6222", "10.0.0.3:6222")


def test_a_node_that_never_clusters_ignores_peers(tmp_path: Path) -> None:
    bus = EmbeddedBus(FakeSupervisor(), tmp_path, config(tmp_path, route_port=0))
    asyncio.run(bus.start(()))
    assert bus.apply_routes(("10.0.0.2:6222",)) == ""
    assert not bus.clustered


@pytest.mark.parametrize("bad", ["", "xyz", "ab" * 4])
def test_a_bad_secret_is_refused_with_a_reason(bad: str, tmp_path: Path) -> None:
    from shared.cluster_secret import BadSecret, load_or_create

    with pytest.raises(BadSecret):
        load_or_create(tmp_path, bad or " ")


def test_the_secret_is_created_once_private_and_kept(tmp_path: Path) -> None:
    from shared.cluster_secret import load_or_create, secret_path

    first, created = load_or_create(tmp_path, None)
    again, created_again = load_or_create(tmp_path, None)
    assert created and not created_again and first == again and len(first) == 64
    assert secret_path(tmp_path).stat().st_mode & 0o077 == 0
    given, _ = load_or_create(tmp_path, "CD" * 32)
    assert given == "cd" * 32 and load_or_create(tmp_path, None)[0] == given
