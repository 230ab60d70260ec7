"""The record a worker keeps of each runner it owns (<state-dir>/runners/<instance>-<rank>.json): the contract
between the worker, which writes it (services/worker/runners/registry.py), and the runner, which reads it to know
whether a live worker still owns it (services/worker/runner/lifetime.py). The create time beside each pid guards
against a pid that the OS reused for another process."""

from __future__ import annotations

from pathlib import Path

import msgspec


class RunnerRecord(msgspec.Struct, frozen=True):
    instance_id: str
    rank: int
    model_id: str
    pid: int
    create_time: float  # psutil's create time of the runner process
    started_at: float  # wall clock
    worker_pid: int  # the worker that owns the runner now
    worker_create_time: float


def read_record(path: Path) -> RunnerRecord | None:
    try:
        return msgspec.json.decode(path.read_bytes(), type=RunnerRecord)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return None
