"""What a node's worker says about its model cache: files held, downloads in progress (not events: they change
every second; the worker publishes them on subjects.models(node))."""

from __future__ import annotations

import asyncio
from typing import Literal

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from shared import subjects

from shared.ids import NodeId
from shared.models import ModelCard

DownloadState = Literal["downloading", "done", "failed"]


class DownloadProgress(msgspec.Struct, frozen=True):
    model_id: str
    repo_id: str
    state: DownloadState
    bytes_done: int
    bytes_total: int  # of the files this node fetches (only its layers' files of a sharded repo)
    bytes_per_s: float = 0.0
    eta_s: float | None = None
    error: str = ""
    files: tuple[str, ...] = ()


class CachedModel(msgspec.Struct, frozen=True):
    repo_id: str
    revision: str  # the commit the snapshot is of
    size_bytes: int
    n_files: int
    path: str
    complete: bool  # every weight file of the repo is here (a pipeline node may hold only its layers')


class NodeModels(msgspec.Struct, frozen=True):
    node_id: NodeId
    cache_dir: str
    disk_free: int
    cached: tuple[CachedModel, ...] = ()
    downloads: tuple[DownloadProgress, ...] = ()


class PullModel(msgspec.Struct, frozen=True):
    """`exo models pull`: download a model into one node's cache (the card says which files)."""

    card: ModelCard


class RemoveModel(msgspec.Struct, frozen=True):
    repo_id: str


class ModelsReply(msgspec.Struct, frozen=True):
    ok: bool
    error: str | None = None
    models: NodeModels | None = None


async def gather_node_models(nc: NATS, wait_s: float = 1.0) -> list[NodeModels]:
    """Ask every worker for its cache (subjects.MODELS_LIST) and collect the answers that come within wait_s."""
    inbox = nc.new_inbox()
    answers: list[NodeModels] = []

    async def collect(msg: Msg) -> None:
        reply = msgspec.json.decode(msg.data, type=ModelsReply)
        if reply.models is not None:
            answers.append(reply.models)

    sub = await nc.subscribe(inbox, cb=collect)
    try:
        await nc.publish(subjects.MODELS_LIST, b"", reply=inbox)
        await asyncio.sleep(wait_s)
    finally:
        await sub.unsubscribe()
    return sorted(answers, key=lambda m: m.node_id)
