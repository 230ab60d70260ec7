"""Telling the master what this worker and its runners are doing (it turns reports into events)."""

from __future__ import annotations

import structlog
from nats.aio.client import Client as NATS

from shared import subjects
from shared.bus import send_command
from shared.commands import ReportRunner, ReportWorkerStarted, encode
from shared.events import RunnerPhase
from shared.ids import InstanceId, NodeId

log = structlog.get_logger()


async def report_runner(
    nc: NATS,
    instance_id: str,
    node_id: str,
    rank: int,
    phase: RunnerPhase,
    detail: str = "",
    progress: float | None = None,
) -> bool:
    """False if the master refused the report or never answered."""
    report = ReportRunner(InstanceId(instance_id), NodeId(node_id), rank, phase, detail, progress)
    reply = await send_command(nc, subjects.CMD_REPORT_RUNNER, encode(report))
    if reply is None:
        log.error("runner report not delivered: no master answered", phase=phase, instance=instance_id)
        return False
    if not reply.ok:
        log.warning("runner report refused", phase=phase, error=reply.error)
    return reply.ok


async def report_worker_started(nc: NATS, node_id: str, kept: tuple[str, ...] = ()) -> None:
    """Until the master has heard this, the state may still show runners from before the restart (but for
    `kept`: the runner keys of the runners this worker adopted, whose statuses stay true)."""
    report = encode(ReportWorkerStarted(NodeId(node_id), kept))
    while (await send_command(nc, subjects.CMD_WORKER_STARTED, report)) is None:
        log.warning("no master answers yet; the worker waits before starting runners")
