"""This node's model cache on the bus: what it holds and downloads (published on subjects.models(node)), and the
pull / rm / list requests of `exo models`."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import msgspec
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.micro.request import Request
from nats.micro.service import Service

from shared import subjects
from shared.downloads import DownloadProgress, ModelsReply, NodeModels, PullModel, RemoveModel
from shared.ids import NodeId
from shared.models import HubRepo, LocalFolder, ModelCard

from services.worker.models import hub_download
from services.worker.models.hub_download import DownloadFailed

log = structlog.get_logger()

PUBLISH_PERIOD_S = 5.0


class ModelCache:
    def __init__(self, nc: NATS, node_id: str) -> None:
        self.nc = nc
        self.node_id = node_id
        self.downloads: dict[str, DownloadProgress] = {}
        self._loop = asyncio.get_running_loop()
        self._last_publish = 0.0

    def snapshot(self) -> NodeModels:
        root = hub_download.cache_dir()
        probe = next(p for p in (root, *root.parents) if p.exists())
        return NodeModels(NodeId(self.node_id), str(root), shutil.disk_usage(probe).free,
                          tuple(hub_download.list_cached()), tuple(self.downloads.values()))  # fmt: skip

    async def publish(self) -> None:
        self._last_publish = time.monotonic()
        await self.nc.publish(subjects.models(self.node_id), msgspec.json.encode(await asyncio.to_thread(self.snapshot)))

    async def publish_now_and_then(self) -> None:
        if time.monotonic() - self._last_publish >= PUBLISH_PERIOD_S:
            await self.publish()

    def on_progress(self, progress: DownloadProgress) -> None:
        """Called from the download's threads."""
        self.downloads[progress.model_id] = progress
        asyncio.run_coroutine_threadsafe(self.publish(), self._loop)

    async def ensure(self, card: ModelCard, layers: tuple[int, int] | None,
                     also: Callable[[DownloadProgress], None] | None = None) -> Path:  # fmt: skip
        """The folder the runner loads (hub snapshot or the user's folder); raises DownloadFailed."""
        if isinstance(card.source, LocalFolder):
            folder = Path(card.source.path)
            if not (folder / "config.json").is_file():
                raise DownloadFailed(f"no model folder at {folder} on node {self.node_id}")
            return folder
        assert isinstance(card.source, HubRepo)
        def sink(progress: DownloadProgress) -> None:
            self.on_progress(progress)
            if also is not None:
                also(progress)

        return await asyncio.to_thread(hub_download.fetch, card, layers, sink)

    async def register(self, service: Service) -> None:
        await service.add_endpoint(name="models_pull", subject=subjects.models_pull(self.node_id), handler=self._pull)
        await service.add_endpoint(name="models_rm", subject=subjects.models_remove(self.node_id), handler=self._rm)
        await self.nc.subscribe(subjects.MODELS_LIST, cb=self._list)

    async def _list(self, msg: Msg) -> None:
        if msg.reply:
            snapshot = await asyncio.to_thread(self.snapshot)
            await msg.respond(msgspec.json.encode(ModelsReply(ok=True, models=snapshot)))

    async def _pull(self, req: Request) -> None:
        try:
            pull = msgspec.json.decode(req.data, type=PullModel)
            await self.ensure(pull.card, None)
            reply = ModelsReply(ok=True, models=await asyncio.to_thread(self.snapshot))
        except (msgspec.ValidationError, msgspec.DecodeError, DownloadFailed) as exc:
            reply = ModelsReply(ok=False, error=str(exc))
        await req.respond(msgspec.json.encode(reply))

    async def _rm(self, req: Request) -> None:
        try:
            rm = msgspec.json.decode(req.data, type=RemoveModel)
            removed = await asyncio.to_thread(hub_download.remove_cached, rm.repo_id)
            self.downloads = {k: v for k, v in self.downloads.items() if v.repo_id != rm.repo_id}
            error = None if removed else f"{rm.repo_id} is not in the cache of node {self.node_id}"
            reply = ModelsReply(ok=removed, error=error, models=await asyncio.to_thread(self.snapshot))
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            reply = ModelsReply(ok=False, error=str(exc))
        await self.publish()
        await req.respond(msgspec.json.encode(reply))


def download_line(p: DownloadProgress) -> str:
    eta = f", ETA {p.eta_s:.0f} s" if p.eta_s else ""
    return f"{p.repo_id} {p.bytes_done / 1e6:.1f}/{p.bytes_total / 1e6:.1f} MB, {p.bytes_per_s / 1e6:.2f} MB/s{eta}"
