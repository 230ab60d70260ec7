"""Typed ids, so a node id is never passed where an instance id belongs."""

from __future__ import annotations

import secrets
from typing import NewType

NodeId = NewType("NodeId", str)
InstanceId = NewType("InstanceId", str)
RequestId = NewType("RequestId", str)


def _token(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(6)}"


def new_node_id() -> NodeId:
    return NodeId(_token("node-"))


def new_instance_id() -> InstanceId:
    return InstanceId(_token("inst-"))


def new_request_id() -> RequestId:
    return RequestId(_token("req-"))
