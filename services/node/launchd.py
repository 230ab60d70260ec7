"""launchd property lists, one per service: how a Mac runs a node in production.

launchd is the supervisor there (KeepAlive restarts a crashed service; ThrottleInterval is its backoff).
The plists are generated, checked as data in the tests, and cannot be loaded on Linux. Under launchd the bus
is the standalone server `exo launchd` configures; joining it to other machines' buses (the routes `exo`
adds as peers appear) is done by `exo` itself and is not yet done under launchd.
"""

from __future__ import annotations

import plistlib
from pathlib import Path

from shared.config import DEFAULT_API_PORT, DEFAULT_NATS_PORT

from services.node.nats_server import config_path

LABEL_PREFIX = "io.exo-distributed"
SERVICES = ("nats-server", "discovery", "master", "worker", "gateway")


def service_plist(service: str, venv: Path, state_dir: Path, api_port: int, nats_port: int) -> dict:
    nats_url = f"nats://127.0.0.1:{nats_port}"
    if service == "nats-server":
        # `exo launchd` writes this file: loopback, JetStream, the credentials derived from the cluster secret
        program = [str(venv / "bin" / "nats-server"), "-c", str(config_path(state_dir))]
    else:
        program = [str(venv / "bin" / "exo"), "service", service]
    return {
        "Label": f"{LABEL_PREFIX}.{service}",
        "ProgramArguments": program,
        "EnvironmentVariables": {
            "EXO_NATS_URL": nats_url,
            "EXO_STATE_DIR": str(state_dir),
            "EXO_PORT": str(api_port),
            "EXO_HOST": "127.0.0.1",
            "EXO_CONSOLE_LOGS": "0",
            "PYTHONUNBUFFERED": "1",
        },
        "RunAtLoad": True,
        "KeepAlive": True,
        "ThrottleInterval": 2,
        "ProcessType": "Interactive" if service == "worker" else "Standard",
        "StandardOutPath": str(state_dir / "logs" / f"{service}.out"),
        "StandardErrorPath": str(state_dir / "logs" / f"{service}.err"),
        "WorkingDirectory": str(state_dir),
    }


def write_plists(
    out_dir: Path, venv: Path, state_dir: Path, api_port: int = DEFAULT_API_PORT, nats_port: int = DEFAULT_NATS_PORT
) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for service in SERVICES:
        path = out_dir / f"{LABEL_PREFIX}.{service}.plist"
        path.write_bytes(plistlib.dumps(service_plist(service, venv, state_dir, api_port, nats_port), sort_keys=True))
        written.append(path)
    return written
