"""GET /v1/inferences?limit=N: the last inferences of the leader's inference log, newest first (JSON)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from shared.inference_log import LAST_INFERENCES_SQL, InferenceQuery, query_inference_log

from services.gateway.errors import OpenAIError, bad_request
from services.gateway.openapi_doc import error_responses

router = APIRouter()

MAX_LIMIT = 1000


@router.get("/v1/inferences", responses=error_responses(400, 503))
async def last_inferences(request: Request, limit: int = 20) -> dict:
    if not 1 <= limit <= MAX_LIMIT:
        raise bad_request(f"limit must be between 1 and {MAX_LIMIT}: {limit}", param="limit")
    nc = request.app.state.gateway.nc
    rows = await query_inference_log(nc, InferenceQuery(LAST_INFERENCES_SQL.format(limit=limit), max_rows=limit))
    if rows.error is not None:
        raise OpenAIError(503, f"inference log: {rows.error}", "service_unavailable", "inference_log_unavailable")
    return {"object": "list", "data": [dict(zip(rows.columns, row)) for row in rows.rows]}
