"""Configuration common to every service: flags, with defaults from the environment.

Each service adds its own flags on top (see its `config.py`); the supervisor passes settings to the
services it starts through these environment variables, so a service started alone by launchd reads the same.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

import msgspec

from shared.cluster_secret import SECRET_ENV, BadSecret, remember, stored

DEFAULT_NATS_PORT = 4222
DEFAULT_API_PORT = 8080
DEFAULT_DISCOVERY_PORT = 52416  # UDP beacons
DEFAULT_ROUTE_PORT = 6222  # NATS cluster routes between the nodes' buses


def default_state_dir() -> Path:
    return Path(os.environ.get("EXO_STATE_DIR", Path.home() / ".exo"))


class CommonConfig(msgspec.Struct, frozen=True):
    nats_url: str
    state_dir: Path
    log_level: str
    console_logs: bool

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--nats-url",
        default=os.environ.get("EXO_NATS_URL", f"nats://127.0.0.1:{DEFAULT_NATS_PORT}"),
        help="NATS server to use (env EXO_NATS_URL)",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=default_state_dir(),
        help="where this node keeps its id, models, logs and NATS data (env EXO_STATE_DIR, default ~/.exo)",
    )
    parser.add_argument("--log-level", default=os.environ.get("EXO_LOG_LEVEL", "info"))


def common_from_args(ns: argparse.Namespace) -> CommonConfig:
    state_dir = Path(ns.state_dir).expanduser()
    # The secret: from the environment of a service started alone (taken out of it, so that runners do not
    # inherit it), else where the node keeps it. Runners read it from the state dir themselves.
    given = os.environ.pop(SECRET_ENV, None)
    try:
        remember(given or stored(state_dir))
    except BadSecret:  # said where it matters: discovery sends no beacons, the bus refuses the connection
        remember(stored(state_dir))
    return CommonConfig(
        nats_url=ns.nats_url,
        state_dir=state_dir,
        log_level=ns.log_level,
        console_logs=os.environ.get("EXO_CONSOLE_LOGS", "1") != "0",
    )


def parse_bytes(text: str) -> int:
    """'1GB', '512MiB', '2g', '1000000' -> bytes. Decimal units are 1000-based, IEC ones 1024-based."""
    units = {
        "": 1, "b": 1,
        "k": 1024, "kb": 1000, "kib": 1024,
        "m": 1024**2, "mb": 1000**2, "mib": 1024**2,
        "g": 1024**3, "gb": 1000**3, "gib": 1024**3,
        "t": 1024**4, "tb": 1000**4, "tib": 1024**4,
    }  # fmt: skip
    cleaned = text.strip().lower().replace(" ", "")
    number = cleaned.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = cleaned[len(number):]
    hint = f"not a size: {text!r} (try 512MB, 1GB, 2GiB)"
    if not number or unit not in units:
        raise ValueError(hint)
    try:
        value = float(number) * units[unit]
    except ValueError:
        raise ValueError(hint) from None
    if not math.isfinite(value):
        raise ValueError(hint)
    result = int(value)
    if result <= 0:
        raise ValueError(f"size must be positive (at least one byte): {text!r}")
    return result
