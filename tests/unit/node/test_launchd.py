"""launchd cannot run here: the plists are checked as data (parsed with plistlib, compared with the generator)."""

from __future__ import annotations

import plistlib
from pathlib import Path

from services.node.cli import SERVICES as NODE_SERVICES
from services.node.launchd import LABEL_PREFIX, SERVICES, service_plist, write_plists

DEPLOY = Path(__file__).resolve().parents[3] / "deploy" / "launchd"


def test_committed_plists_are_what_the_generator_writes(tmp_path: Path) -> None:
    written = write_plists(tmp_path, Path("/opt/exo/.venv"), Path("/var/lib/exo"))
    assert [p.name for p in written] == [f"{LABEL_PREFIX}.{s}.plist" for s in SERVICES]
    for path in written:
        assert (DEPLOY / path.name).read_bytes() == path.read_bytes(), f"regenerate {path.name}: exo launchd"


def test_every_service_has_a_plist_that_launchd_keeps_alive() -> None:
    assert set(NODE_SERVICES) | {"nats-server"} == set(SERVICES)
    for service in SERVICES:
        plist = plistlib.loads((DEPLOY / f"{LABEL_PREFIX}.{service}.plist").read_bytes())
        assert plist["Label"] == f"{LABEL_PREFIX}.{service}"
        assert plist["KeepAlive"] is True and plist["RunAtLoad"] is True
        assert plist["ThrottleInterval"] >= 1
        assert plist["EnvironmentVariables"]["EXO_NATS_URL"].startswith("nats://127.0.0.1:")
        assert plist["StandardErrorPath"].endswith(f"{service}.err")
        program = plist["ProgramArguments"]
        if service == "nats-server":
            assert program[0].endswith("/nats-server") and program[1:] == ["-c", "/var/lib/exo/nats/nats.conf"]
        else:
            assert program[1:] == ["service", service]


def test_ports_and_state_dir_reach_the_services() -> None:
    plist = service_plist("gateway", Path("/v"), Path("/s"), api_port=9000, nats_port=5222)
    assert plist["EnvironmentVariables"]["EXO_PORT"] == "9000"
    assert plist["EnvironmentVariables"]["EXO_NATS_URL"] == "nats://127.0.0.1:5222"
    assert plist["EnvironmentVariables"]["EXO_STATE_DIR"] == "/s"
