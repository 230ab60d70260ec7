"""The worker's registry of its runners: one small JSON file per runner under <state-dir>/runners/.

A runner outlives a killed worker; the restarted worker reads the registry to find it again (adoption). The
record itself (shared/runner_record.py) also names the worker that currently owns the runner: the runner reads
it to know whether anyone still looks after it."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
import structlog

from shared.runner_record import RunnerRecord, read_record

log = structlog.get_logger()


def registry_dir(state_dir: Path) -> Path:
    return state_dir / "runners"


def record_path(state_dir: Path, instance_id: str, rank: int) -> Path:
    return registry_dir(state_dir) / f"{instance_id}-{rank}.json"


def write_record(state_dir: Path, record: RunnerRecord) -> Path:
    path = record_path(state_dir, record.instance_id, record.rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_bytes(msgspec.json.encode(record))
    tmp.replace(path)  # atomic: the runner never reads half a record
    return path


def read_all(state_dir: Path) -> list[tuple[Path, RunnerRecord | None]]:
    """Every record file; None for one that cannot be read (a stale record to remove)."""
    directory = registry_dir(state_dir)
    if not directory.is_dir():
        return []
    return [(path, read_record(path)) for path in sorted(directory.glob("*.json"))]


def remove_record(state_dir: Path, instance_id: str, rank: int, pid: int | None = None) -> None:
    """Remove the record; with `pid`, only while it still describes that process (not a newer runner's)."""
    path = record_path(state_dir, instance_id, rank)
    if pid is not None:
        current = read_record(path)
        if current is not None and current.pid != pid:
            return
    path.unlink(missing_ok=True)
