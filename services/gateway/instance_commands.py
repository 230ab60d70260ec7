"""Asking the master about instances (services/gateway/instances.py, group_instances.py): commands, with the
retry over a leader's handover; the model card a command carries; an instance as the API shows it."""

from __future__ import annotations

import asyncio
from typing import TypeVar

import msgspec
from fastapi import Request
from nats.errors import NoRespondersError, TimeoutError as NatsTimeout

from shared.commands import CommandReply, GroupPreviewReply, PreviewReply, decode_reply
from shared.ids import InstanceId
from shared.models import ModelCard, builtin_card
from shared.state import ClusterState

from services.gateway.errors import OpenAIError, unavailable
from services.gateway.model_lookup import ModelLookupError, resolve_card

COMMAND_TIMEOUT_S = 10.0
HANDOVER_S = 8.0  # a new leader answers within ~2-3 s of the old one's death (bench.failover)
R = TypeVar("R", CommandReply, PreviewReply, GroupPreviewReply)


def instance_view(state: ClusterState, instance_id: InstanceId) -> dict:
    instance = state.instances[instance_id]
    runners = state.instance_runners(instance_id)
    return msgspec.to_builtins(instance) | {
        "ready": state.instance_ready(instance_id),
        "runners": [msgspec.to_builtins(r) if r else None for r in runners],
    }


async def card_for(request: Request, model: str, param: str | None = None) -> ModelCard:
    """The model's card: built in, recorded, or derived from its hub repo or folder (network: off the loop)."""
    state: ClusterState = request.app.state.gateway.follower.state
    try:
        return await asyncio.to_thread(resolve_card, model, state.models)
    except ModelLookupError as exc:
        kind = "invalid_request_error" if exc.status < 500 else "service_unavailable"
        raise OpenAIError(exc.status, exc.reason, type_=kind, code=exc.code, param=param) from None


def carried(card: ModelCard) -> ModelCard | None:
    """Built-in cards go by name; a derived one travels with the command for the master to record."""
    return None if builtin_card(card.model_id) is not None else card


async def command(request: Request, subject: str, payload: bytes, reply_type: type[R] = CommandReply) -> R:  # type: ignore[assignment]
    """Ask the leader. While none answers (a handover: the old leader's endpoints are gone, the new one's not
    yet there) ask again, for HANDOVER_S; nothing was received, so nothing can happen twice. A timeout is not
    retried: a placement may have been made and its reply lost."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + HANDOVER_S
    while True:
        try:
            msg = await request.app.state.gateway.nc.request(subject, payload, timeout=COMMAND_TIMEOUT_S)
            return decode_reply(msg.data, msg.headers, reply_type)
        except NoRespondersError:
            if loop.time() >= deadline:
                raise unavailable(
                    f"no master has answered commands for {HANDOVER_S:.0f} s (no leader); try again shortly"
                ) from None
            await asyncio.sleep(0.2)
        except NatsTimeout:
            raise unavailable(f"the master did not answer within {COMMAND_TIMEOUT_S:.0f} s; try again") from None
