"""What a node's previous run left running when its `exo` process was killed (-9, a crash) and could not stop
its children. The services and runners stop by themselves once the supervisor is gone (shared/process_lifetime.py,
runner/lifetime.py), and on Linux so does the bus (die_with_parent.py). On other systems the bus stays up;
the next start on the same state dir stops it here, instead of failing on its taken port.

Only what is certainly this node's is touched: the recorded bus pid, while the recorded supervisor is gone,
and only if that process runs nats-server with this state dir's configuration file.
"""

from __future__ import annotations

import json
from pathlib import Path

import psutil
import structlog

from services.node.nats_server import config_path
from services.node.supervisor import BUS_CHILD

log = structlog.get_logger()

STOP_WAIT_S = 10.0


def recorded_pids(state_dir: Path) -> dict[str, int]:
    """The pids.json of the node's last run ({} when there is none, or it is unreadable)."""
    try:
        data = json.loads((state_dir / "pids.json").read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, int)}


def _running(pid: int | None) -> psutil.Process | None:
    if pid is None:
        return None
    try:
        proc = psutil.Process(pid)
        return proc if proc.status() != psutil.STATUS_ZOMBIE else None
    except psutil.Error:
        return None


def is_our_bus(proc: psutil.Process, state_dir: Path) -> bool:
    try:
        cmdline = proc.cmdline()
    except psutil.Error:
        return False
    return bool(cmdline) and Path(cmdline[0]).name.startswith("nats-server") and str(config_path(state_dir)) in cmdline


def stop_left_bus(state_dir: Path) -> int | None:
    """Stop the bus that a killed previous run of this node left running; its pid, or None if there was none."""
    pids = recorded_pids(state_dir)
    if _running(pids.get("supervisor")) is not None:
        return None  # that run is alive (or its pid is someone else's now): not ours to stop
    bus = _running(pids.get(BUS_CHILD))
    if bus is None or not is_our_bus(bus, state_dir):
        return None
    log.warning("stopping the bus that this node's previous run left running", pid=bus.pid)
    bus.terminate()
    _, alive = psutil.wait_procs([bus], timeout=STOP_WAIT_S)
    for proc in alive:
        proc.kill()
    return bus.pid
