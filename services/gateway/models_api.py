"""GET /models: what each node's worker holds in its model cache and downloads now (bytes, speed, ETA)."""

from __future__ import annotations

import msgspec
from fastapi import APIRouter, Request

from shared.downloads import gather_node_models

from services.gateway.openapi_doc import error_responses

router = APIRouter()


@router.get("/models", responses=error_responses())
async def node_models(request: Request) -> dict:
    nodes = await gather_node_models(request.app.state.gateway.nc, wait_s=0.5)
    return {"nodes": msgspec.to_builtins(nodes)}
