"""`exo --model M`: ask the master to place the model once the node has joined (if it is not placed yet)."""

from __future__ import annotations

import asyncio
from typing import Literal

import structlog

from shared import subjects
from shared.bus import connect, send_command
from shared.commands import CommandReply, PlaceInstance, encode
from shared.models import builtin_card

from services.gateway.model_lookup import ModelLookupError, resolve_card

log = structlog.get_logger()

Backend = Literal["auto", "ring", "jaccl"]  # as in PlaceInstance.backend

PLACE_DEADLINE_S = 120.0


async def place_at_start(
    nats_url: str, model_id: str, stop: asyncio.Event, backend: Backend = "auto"
) -> CommandReply | None:
    nc = await connect(nats_url, "exo-node-bootstrap")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + PLACE_DEADLINE_S
    reply = None
    try:
        card = await asyncio.to_thread(resolve_card, model_id, {})
    except ModelLookupError as exc:
        log.error("could not place the model at start", model=model_id, reason=exc.reason)
        await nc.close()
        return CommandReply(ok=False, error=exc.reason)
    carried = None if builtin_card(card.model_id) else card
    payload = encode(PlaceInstance(card.model_id, backend=backend, if_absent=True, card=carried))
    try:
        while not stop.is_set() and loop.time() < deadline:
            answer = await send_command(nc, subjects.CMD_PLACE_INSTANCE, payload, attempts=3)
            if answer is not None and not answer.ok and (reply is None or reply.error != answer.error):
                # said at once (and again when it changes): a refusal such as "jaccl needs RDMA" may never lift
                log.warning("placement at start refused; trying again", model=model_id, backend=backend,
                            reason=answer.error)  # fmt: skip
            reply = answer or reply  # None: the master is still starting
            if answer is not None and answer.ok:
                log.info("model placed", model=model_id, instance=answer.instance_id)
                return answer
            await asyncio.sleep(1.0)  # e.g. this node's facts have not reached the master yet
        log.error("could not place the model at start", model=model_id, backend=backend, reason=reply.error if reply else "no master")
        return reply
    finally:
        await nc.close()
