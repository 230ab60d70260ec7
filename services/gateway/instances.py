"""/instances: list, create and delete model instances (commands to the master), and /v1/models. A body (or a
preview) with `trifurcated` is a group: services/gateway/group_instances.py."""

from __future__ import annotations

from typing import Annotated

import msgspec
from fastapi import APIRouter, Query, Request

from shared import subjects
from shared.commands import CommandReply, DeleteInstance, PlaceInstance, PreviewPlacements, PreviewReply, encode
from shared.ids import InstanceId
from shared.models import all_cards
from shared.state import ClusterState

from services.gateway.errors import OpenAIError, bad_request
from services.gateway.group_instances import GroupField, decode_group, place_group, plan_group, preview_group
from services.gateway.instance_commands import COMMAND_TIMEOUT_S, card_for, carried, command, instance_view
from services.gateway.openai_schema import SpeculativeField, invalid_field, speculation_of
from services.gateway.routing import default_speculation
from services.gateway.openapi_doc import error_responses, json_body

router = APIRouter()


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
    trifurcated: bool | GroupField | None = None  # a group (true: its defaults): validator (and draft) placed apart
    # speculative decoding for the instance's requests that ask none themselves (docs/speculative.md)
    speculative: SpeculativeField | None = None


@router.get("/instances/preview", responses=error_responses(400, 403, 404, 503))
async def preview_instances(
    request: Request, model: str, min_nodes: Annotated[int, Query(ge=1)] = 1,
    max_nodes: Annotated[int | None, Query(ge=1)] = None, trifurcated: bool = False, validator: str | None = None,
    draft: str | None = None, policy: str | None = None,
) -> dict:  # fmt: skip
    """Every feasible plan with memory per node, and the reason for each infeasible one; with `trifurcated=true`
    (or a group field: validator, draft, policy), also where each role of the group would go (`group`)."""
    if min_nodes < 1 or (max_nodes is not None and max_nodes < min_nodes):
        raise bad_request("need 1 <= min_nodes <= max_nodes", param="min_nodes")
    card = await card_for(request, model)
    ask = PreviewPlacements(card.model_id, min_nodes, max_nodes, card=carried(card))
    reply = await command(request, subjects.CMD_PREVIEW, encode(ask), PreviewReply)
    if not reply.ok:
        raise bad_request(reply.error or "preview failed")
    found = {"model": model, "options": msgspec.to_builtins(reply.options), "memory": msgspec.to_builtins(reply.memory)}
    fields = {k: v for k, v in {"validator": validator, "draft": draft, "policy": policy}.items() if v is not None}
    if trifurcated or fields:
        found["group"] = await preview_group(request, await plan_group(request, card, decode_group(fields)), min_nodes)
    return found


@router.post("/instances", status_code=201, openapi_extra=json_body(CreateInstance),
             responses=error_responses(400, 403, 404, 409, 503))  # fmt: skip
async def create_instance(request: Request) -> dict:
    try:
        body = msgspec.json.decode(await request.body(), type=CreateInstance)
        place = msgspec.convert(
            {"model_id": body.model, "strategy": body.strategy, "backend": body.backend, "min_nodes": body.min_nodes},
            PlaceInstance,
        )
    except msgspec.ValidationError as exc:
        raise bad_request(f"invalid instance request: {exc}", param=invalid_field(str(exc))) from None
    except msgspec.DecodeError as exc:
        raise bad_request(f"invalid instance request: {exc}") from None
    card = await card_for(request, body.model, param="model")
    state: ClusterState = request.app.state.gateway.follower.state
    default = None if body.speculative is None else default_speculation(state, speculation_of(body.speculative))
    place = msgspec.structs.replace(place, model_id=card.model_id, card=carried(card), speculative=default)
    if body.trifurcated:
        group = GroupField() if body.trifurcated is True else body.trifurcated
        assert isinstance(group, GroupField)
        return await place_group(request, place, await plan_group(request, card, group))
    reply: CommandReply = await command(request, subjects.CMD_PLACE_INSTANCE, encode(place))
    if not reply.ok:
        raise OpenAIError(409, reply.error or "placement failed", code="placement_failed")
    assert reply.instance_id is not None, "an accepted placement names its instance"
    gateway = request.app.state.gateway
    state = await gateway.follower.wait_until(lambda s: reply.instance_id in s.instances, COMMAND_TIMEOUT_S)
    return instance_view(state, reply.instance_id)


@router.delete("/instances/{instance_id}", responses=error_responses(404, 503))
async def delete_instance(request: Request, instance_id: str) -> dict:
    reply: CommandReply = await command(request, subjects.CMD_DELETE_INSTANCE, encode(DeleteInstance(InstanceId(instance_id))))
    if not reply.ok:
        raise OpenAIError(404, reply.error or "no such instance", code="instance_not_found")
    return {"deleted": instance_id}
