"""/openapi.json for routes that decode their bodies with msgspec: request bodies and error answers declared.

The routes read raw JSON (msgspec decodes it, with our own 400s), so FastAPI knows nothing of their bodies;
these helpers put the msgspec structs' JSON schema into the doc, so clients and schema fuzzers see them.
"""

from __future__ import annotations

from collections.abc import Iterable
from http import HTTPStatus

import msgspec
from fastapi import FastAPI

from services.gateway.errors import ErrorResponse

REF_TEMPLATE = "#/components/schemas/{name}"
ERROR_REF = {"$ref": REF_TEMPLATE.format(name=ErrorResponse.__name__)}


def json_body(type_: type) -> dict:
    """`openapi_extra` of a route whose JSON body decodes as `type_` (give the type to `describe` as well)."""
    schema = {"$ref": REF_TEMPLATE.format(name=type_.__name__)}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def error_responses(*statuses: int) -> dict:
    """`responses` of a route: these statuses, and every other 4xx and 5xx (401 with a key, 413, 500), as
    OpenAI's error JSON. The ranges also stop FastAPI adding its own 422, which this gateway never sends."""
    error = {"content": {"application/json": {"schema": ERROR_REF}}}
    described: dict = {status: {"description": HTTPStatus(status).phrase} | error for status in statuses}
    return described | {"4XX": {"description": "Client error"} | error, "5XX": {"description": "Server error"} | error}


def describe(app: FastAPI, body_types: Iterable[type]) -> None:
    """Have `app.openapi()` carry the schemas of these body types and of the error answer."""
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            doc = build()
            _, components = msgspec.json.schema_components([*body_types, ErrorResponse], ref_template=REF_TEMPLATE)
            doc.setdefault("components", {}).setdefault("schemas", {}).update(components)
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
