"""The node facts discovery publishes every few seconds, the latest per node: the dashboard's live numbers."""

from __future__ import annotations

import msgspec
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from shared import subjects
from shared.facts import NodeFacts

log = structlog.get_logger()


class LiveFacts:
    def __init__(self) -> None:
        self.latest: dict[str, NodeFacts] = {}

    async def follow(self, nc: NATS) -> None:
        await nc.subscribe(subjects.facts_wildcard(), cb=self._on_facts)

    async def _on_facts(self, msg: Msg) -> None:
        try:
            facts = msgspec.json.decode(msg.data, type=NodeFacts)
        except msgspec.DecodeError as exc:  # a bad publisher must not stop the feed
            log.debug("unreadable node facts ignored", subject=msg.subject, error=str(exc))
            return
        self.latest[facts.node_id] = facts
