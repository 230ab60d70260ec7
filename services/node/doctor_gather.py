"""`exo doctor`'s I/O shell: gathers the facts doctor_checks.py judges.

Where from, and why: the local node's gateway (GET /health, /instances, /instances/preview) for the cluster as the
node sees it (leader, instances, runner errors, memory per node); the bus itself (connected with the cluster
secret from the state dir) because the gateway may be the part that is down; the state dir (peers.json,
discovery's log, pids.json) for discovery, which answers even without a bus; and this machine (ibv_devices,
network interfaces, mlx, disk, the runners' /proc) for what only the machine can say.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import psutil

from services.discovery.local_facts import mlx_backends
from services.node.doctor_checks import Facts
from services.worker.runner.blas import blas_in_use
from shared import subjects
import msgspec

from shared.cluster_secret import remembered
from shared.config import environment, remember_secret
from shared.specs import RunnerSpec, decode_spec
from shared.peers import peers_path, read_table

RECENT_S = 120.0  # discovery log lines older than this are history, not the present state


def http_json(url: str, api_key: str | None, timeout: float = 5.0) -> dict:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as resp:
        return json.loads(resp.read())


def gather_gateway(url: str, api_key: str | None) -> dict:
    out: dict = {}
    try:
        out["health"] = http_json(f"{url}/health", api_key)
        listing = http_json(f"{url}/instances", api_key)
        out["instances"], out["waiting"] = listing["instances"], listing["waiting"]
        models = sorted({i["model_id"] for i in out["instances"]} | {w["model"] for w in out["waiting"]})
        if models:
            out["node_memory"] = http_json(f"{url}/instances/preview?model={models[0]}", api_key, 30.0)["memory"]
    except (urllib.error.URLError, OSError, ValueError, KeyError) as exc:
        out["gateway_error"] = f"{url}: {exc}"
    return out


async def gather_bus(nats_url: str, state_dir: Path) -> dict:
    from shared.bus import connect

    if remembered() is None:  # the bus credentials derive from it; in memory only, never os.environ
        remember_secret(state_dir, environment().get("cluster_secret"))
    try:
        nc = await connect(nats_url, "exo-doctor", first_connect_timeout=5.0)
    except ConnectionError as exc:
        return {"bus_error": str(exc)}
    out: dict = {"routes": configured_routes(state_dir)}
    try:
        info = await nc.jetstream().stream_info(subjects.EVENTS_STREAM)
        if info.cluster is not None:
            out["offline_replicas"] = [r.name for r in info.cluster.replicas or [] if r.offline]
    except Exception as exc:  # noqa: BLE001 - any failure here is the answer
        out["jetstream_error"] = f"{type(exc).__name__}: {exc}"
    await nc.close()
    return out


def configured_routes(state_dir: Path) -> list[str]:
    """The peers' route addresses the embedded nats-server was given (nats.conf, credentials left out)."""
    try:
        text = (state_dir / "nats" / "nats.conf").read_text()
    except OSError:
        return []
    return re.findall(r"nats-route://[^@\s]*@([^\"\s]+)", text)


def gather_discovery(state_dir: Path, now: float) -> dict:
    table = read_table(state_dir)
    out: dict = {"rejections": recent_rejections(state_dir / "logs" / "discovery.log", now)}
    if table is None:
        return out
    out["peers_age_s"] = now - peers_path(state_dir).stat().st_mtime
    out["local_node"] = table.node_id
    out["peers"] = [{"node_id": p.node_id, "hostname": p.hostname, "backends": list(p.backends),
                     "route_port": p.route_port} for p in table.peers]  # fmt: skip
    return out


def recent_rejections(log: Path, now: float) -> list[str]:
    try:
        lines = log.read_text(errors="replace").splitlines()[-500:]
    except OSError:
        return []
    found = []
    for line in lines:
        try:
            entry = json.loads(line)
            at = datetime.fromisoformat(entry["timestamp"].replace("Z", "+00:00")).replace(tzinfo=timezone.utc)
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
        if entry.get("event") == "datagram ignored" and now - at.timestamp() < RECENT_S:
            found.append(f"{entry.get('reason')} (from {entry.get('source')})")
    return found


def gather_machine(state_dir: Path) -> dict:
    vm = psutil.virtual_memory()
    ibv = None
    if shutil.which("ibv_devices"):
        run = subprocess.run(["ibv_devices"], capture_output=True, text=True, timeout=10)
        ibv = [ln.split()[0] for ln in run.stdout.splitlines()[2:] if ln.strip()]
    disk = {}
    for path in (state_dir / "models", Path.home() / ".cache" / "huggingface"):
        probe = path if path.exists() else path.parent
        if probe.exists():
            disk[str(path)] = shutil.disk_usage(probe).free
    return {
        "local_backends": list(mlx_backends()),
        "ibv_devices": ibv,
        "thunderbolt": sorted(n for n in psutil.net_if_addrs() if "thunderbolt" in n.lower()
                              or (platform.system() == "Darwin" and n.startswith("bridge"))),  # fmt: skip
        "machine_total": vm.total,
        "machine_available": vm.available,
        "disk_free": disk,
    } | gather_runners(state_dir)


def runner_spec_of(cmdline: list[str]) -> RunnerSpec | None:
    """The spec on a runner's command line (`--spec JSON`), if it is one."""
    if "--spec" not in cmdline[:-1]:
        return None
    try:
        return decode_spec(cmdline[cmdline.index("--spec") + 1], RunnerSpec)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None


def gather_runners(state_dir: Path) -> dict:
    """The runners' ring wait (their spec's, EXO_RING_WAIT) and loaded BLAS, from /proc (Linux; elsewhere
    nothing to read)."""
    waits, blas = [], []
    try:
        worker = psutil.Process(json.loads((state_dir / "pids.json").read_text())["worker"])
        runners = worker.children()
    except (OSError, ValueError, KeyError, psutil.Error):
        runners = []
    for runner in runners:
        try:
            spec = runner_spec_of(runner.cmdline())
            waits.append(spec.settings.ring_wait if spec is not None else "")
            blas.append(blas_in_use(Path(f"/proc/{runner.pid}/maps").read_text()))
        except (OSError, psutil.Error):
            continue
    return {"runner_ring_wait": waits, "runner_blas": blas, "blas_choice": _blas_choice(runners)}


def _blas_choice(runners: list[psutil.Process]) -> str:
    for runner in runners:
        try:
            spec = runner_spec_of(runner.cmdline())
        except psutil.Error:
            continue
        if spec is not None:
            return spec.blas
    return ""


def gather(url: str, api_key: str | None, nats_url: str, state_dir: Path) -> Facts:
    now = time.time()
    found = gather_gateway(url, api_key) | asyncio.run(gather_bus(nats_url, state_dir))
    found |= gather_discovery(state_dir, now) | gather_machine(state_dir)
    return Facts(**found)
