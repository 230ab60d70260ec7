"""Discovery settings: the static peer list and where the secret comes from."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.discovery.__main__ import discovery_spec
from services.discovery.settings import DiscoverySettings, parse_peers, settings_from_spec
from shared.cluster_secret import remember


def test_static_peers_take_the_default_port_when_none_is_given() -> None:
    assert parse_peers(" a.local:5000, 10.0.0.7 ,,", 52416) == (("a.local", 5000), ("10.0.0.7", 52416))
    assert parse_peers("", 52416) == ()


@pytest.mark.parametrize("bad", [":5000", "host:port", "host:70000", "host:0"])
def test_malformed_peers_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_peers(bad, 52416)


@pytest.fixture
def settings_from_args(tmp_path: Path):  # noqa: ANN201
    """Discovery started alone: its spec from flags and the environment, then its settings (no stored secret)."""
    def build(argv: list[str]) -> DiscoverySettings:
        return settings_from_spec(discovery_spec(["--state-dir", str(tmp_path), *argv]))

    yield build
    remember(None)


def parse(argv: list[str]) -> list[str]:
    return argv


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch, settings_from_args) -> None:  # noqa: ANN001
    for name, value in {"EXO_CLUSTER_SECRET": "AB" * 32, "EXO_DISCOVERY_PORT": "45000", "EXO_PEERS": "h1,h2:9",
                        "EXO_ROUTE_PORT": "6222", "EXO_HOSTNAME": "ns-a", "EXO_DISCOVERY_BIND": "127.0.0.1"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    s = settings_from_args(parse([]))
    assert (s.cluster_secret, s.port, s.bind, s.route_port, s.hostname) == ("ab" * 32, 45000, "127.0.0.1", 6222, "ns-a")
    assert s.static_peers == (("h1", 45000), ("h2", 9))


def test_no_or_bad_secret_means_no_beacons(monkeypatch: pytest.MonkeyPatch, settings_from_args) -> None:  # noqa: ANN001
    monkeypatch.delenv("EXO_CLUSTER_SECRET", raising=False)
    assert settings_from_args(parse([])).cluster_secret is None
    assert settings_from_args(parse(["--cluster-secret", "not hex"])).cluster_secret is None
