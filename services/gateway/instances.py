"""/instances: list, create and delete model instances (commands to the master), and /v1/models."""

from __future__ import annotations

import asyncio
import re
from typing import Annotated, TypeVar

import msgspec
from fastapi import APIRouter, Query, Request
from nats.errors import NoRespondersError, TimeoutError as NatsTimeout

from shared import subjects
from shared.commands import (
    CommandReply,
    DeleteInstance,
    PlaceInstance,
    PreviewPlacements,
    PreviewReply,
    decode_reply,
    encode,
)
from shared.models import ModelCard, all_cards, builtin_card
from shared.ids import InstanceId
from shared.state import ClusterState

from services.gateway.errors import OpenAIError, bad_request, unavailable
from services.gateway.model_lookup import ModelLookupError, resolve_card
from services.gateway.openapi_doc import error_responses, json_body

router = APIRouter()

COMMAND_TIMEOUT_S = 10.0
HANDOVER_S = 8.0  # a new leader answers within ~2-3 s of the old one's death (bench.failover)
R = TypeVar("R", CommandReply, PreviewReply)


def instance_view(state: ClusterState, instance_id: InstanceId) -> dict:
    instance = state.instances[instance_id]
    runners = state.instance_runners(instance_id)
    return msgspec.to_builtins(instance) | {
        "ready": state.instance_ready(instance_id),
        "runners": [msgspec.to_builtins(r) if r else None for r in runners],
    }


@router.get("/v1/models", responses=error_responses())
async def list_models(request: Request) -> dict:
    state: ClusterState = request.app.state.gateway.follower.state
    return {
        "object": "list",
        "data": [
            {
                "id": card.model_id,
                "object": "model",
                "created": 0,
                "owned_by": "exo",
                "name": card.display_name,
                "context_length": card.context_length,
                "ready": any(state.instance_ready(i.instance_id) for i in state.instances_of(card.model_id)),
            }
            for card in all_cards(state.models)
        ],
    }


@router.get("/instances", responses=error_responses())
async def list_instances(request: Request) -> dict:
    state: ClusterState = request.app.state.gateway.follower.state
    waiting = [
        {"instance_id": w.instance_id, "model": w.model_id, "strategy": w.strategy, "backend": w.backend,
         "reason": w.reason}
        for w in sorted(state.waiting.values(), key=lambda w: w.instance_id)
    ]  # fmt: skip
    return {"instances": [instance_view(state, iid) for iid in sorted(state.instances)], "waiting": waiting}


class CreateInstance(msgspec.Struct):
    """The body of POST /instances."""

    model: str
    strategy: str = "auto"
    backend: str = "auto"
    min_nodes: Annotated[int, msgspec.Meta(ge=1)] = 1


@router.get("/instances/preview", responses=error_responses(400, 403, 404, 503))
async def preview_instances(
    request: Request, model: str, min_nodes: Annotated[int, Query(ge=1)] = 1,
    max_nodes: Annotated[int | None, Query(ge=1)] = None,
) -> dict:  # fmt: skip
    """Every feasible plan with memory per node, and the reason for each infeasible one."""
    if min_nodes < 1 or (max_nodes is not None and max_nodes < min_nodes):
        raise bad_request("need 1 <= min_nodes <= max_nodes", param="min_nodes")
    card = await card_for(request, model)
    command = PreviewPlacements(card.model_id, min_nodes, max_nodes, card=_carried(card))
    reply = await _command(request, subjects.CMD_PREVIEW, encode(command), PreviewReply)
    if not reply.ok:
        raise bad_request(reply.error or "preview failed")
    return {"model": model, "options": msgspec.to_builtins(reply.options), "memory": msgspec.to_builtins(reply.memory)}


@router.post("/instances", status_code=201, openapi_extra=json_body(CreateInstance),
             responses=error_responses(400, 403, 404, 409, 503))  # fmt: skip
async def create_instance(request: Request) -> dict:
    try:
        body = msgspec.json.decode(await request.body(), type=CreateInstance)
        command = msgspec.convert(
            {"model_id": body.model, "strategy": body.strategy, "backend": body.backend, "min_nodes": body.min_nodes},
            PlaceInstance,
        )
    except msgspec.ValidationError as exc:
        raise bad_request(f"invalid instance request: {exc}", param=field_of(exc)) from None
    except msgspec.DecodeError as exc:
        raise bad_request(f"invalid instance request: {exc}") from None
    card = await card_for(request, body.model, param="model")
    command = msgspec.structs.replace(command, model_id=card.model_id, card=_carried(card))
    reply: CommandReply = await _command(request, subjects.CMD_PLACE_INSTANCE, encode(command))
    if not reply.ok:
        raise OpenAIError(409, reply.error or "placement failed", code="placement_failed")
    assert reply.instance_id is not None, "an accepted placement names its instance"
    gateway = request.app.state.gateway
    state = await gateway.follower.wait_until(lambda s: reply.instance_id in s.instances, COMMAND_TIMEOUT_S)
    return instance_view(state, reply.instance_id)


@router.delete("/instances/{instance_id}", responses=error_responses(404, 503))
async def delete_instance(request: Request, instance_id: str) -> dict:
    reply: CommandReply = await _command(request, subjects.CMD_DELETE_INSTANCE, encode(DeleteInstance(InstanceId(instance_id))))
    if not reply.ok:
        raise OpenAIError(404, reply.error or "no such instance", code="instance_not_found")
    return {"deleted": instance_id}


async def card_for(request: Request, model: str, param: str | None = None) -> ModelCard:
    """The model's card: built in, recorded, or derived from its hub repo or folder (network: off the loop)."""
    state: ClusterState = request.app.state.gateway.follower.state
    try:
        return await asyncio.to_thread(resolve_card, model, state.models)
    except ModelLookupError as exc:
        kind = "invalid_request_error" if exc.status < 500 else "service_unavailable"
        raise OpenAIError(exc.status, exc.reason, type_=kind, code=exc.code, param=param) from None


def _carried(card: ModelCard) -> ModelCard | None:
    """Built-in cards go by name; a derived one travels with the command for the master to record."""
    return None if builtin_card(card.model_id) is not None else card


def field_of(exc: msgspec.ValidationError) -> str | None:
    """The top-level field a msgspec error is about ("... - at `$.min_nodes`"), for the error's param."""
    found = re.search(r"- at `\$\.(\w+)", str(exc))
    return found.group(1) if found else None


async def _command(request: Request, subject: str, payload: bytes, reply_type: type[R] = CommandReply) -> R:  # type: ignore[assignment]
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
