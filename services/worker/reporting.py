"""Telling the master what a runner is doing (it turns reports into events)."""

from __future__ import annotations

import asyncio

import structlog
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError, TimeoutError as NatsTimeout

from shared import subjects
from shared.commands import CommandReply, ReportRunner, decode, encode
from shared.events import RunnerPhase

log = structlog.get_logger()


async def report_runner(
    nc: NATS,
    instance_id: str,
    node_id: str,
    rank: int,
    phase: RunnerPhase,
    detail: str = "",
    progress: float | None = None,
    attempts: int = 20,
) -> bool:
    """Send a report, retrying while no master answers (it may be restarting). False if never delivered."""
    report = ReportRunner(instance_id, node_id, rank, phase, detail, progress)
    for attempt in range(attempts):
        try:
            msg = await nc.request(subjects.CMD_REPORT_RUNNER, encode(report), timeout=2.0)
            reply = decode(msg.data, CommandReply)
            if not reply.ok:
                log.warning("runner report refused", phase=phase, error=reply.error)
            return reply.ok
        except (NoRespondersError, NatsTimeout):
            await asyncio.sleep(min(0.25 * (attempt + 1), 2.0))
    log.error("runner report not delivered: no master answered", phase=phase, instance=instance_id)
    return False
