"""Downloads of hub repos into the standard Hugging Face cache (HF_HOME, HF_HUB_OFFLINE, HF_ENDPOINT, HF_TOKEN all
apply), only the files the runner needs, resumable after a kill (hub_blobs keeps each file's part and resumes it
with a Range request), with progress read from the cache folder itself while the files arrive."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import structlog

from shared.hub_errors import hub_failure
from shared.downloads import CachedModel, DownloadProgress
from shared.models import HubRepo, ModelCard

from services.worker.models import hub_blobs, ranged_fetch
from services.worker.models.hub_files import (
    INDEX_FILE,
    METADATA_PATTERNS,
    disk_problem,
    eta_seconds,
    files_for_layers,
)

log = structlog.get_logger()

ProgressSink = Callable[[DownloadProgress], None]
PROGRESS_PERIOD_S = 0.5
T = TypeVar("T")


class DownloadFailed(RuntimeError):
    """The files cannot be had on this node, and why (the runner reports it: the instance shows it)."""


def cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def repo_dir(repo_id: str) -> Path:
    return cache_dir() / f"models--{repo_id.replace('/', '--')}"


def fetch(card: ModelCard, layers: tuple[int, int] | None, sink: ProgressSink) -> Path:
    """The snapshot folder holding what this node's layers need (all files when layers is None)."""
    from huggingface_hub import constants

    assert isinstance(card.source, HubRepo)
    source = card.source
    cached = _cached_snapshot(source)
    if cached is not None and _holds(cached, needed_files(cached, card, layers)):
        sink(_progress(card, "done", needed_files(cached, card, layers), cached, 0.0, 0))
        return cached  # no network at all
    if constants.HF_HUB_OFFLINE:
        raise DownloadFailed(f"{source.repo_id} is not (fully) in the Hugging Face cache {cache_dir()} and "
                             "HF_HUB_OFFLINE is set")  # fmt: skip
    where = repo_dir(source.repo_id)
    listed = _guarded(source, lambda: hub_blobs.listing(source))
    folder, metadata = where / "snapshots" / listed.commit, listed.matching(METADATA_PATTERNS)
    if layers is not None and INDEX_FILE in listed.files:  # the index says which files hold this node's layers
        _guarded(source, lambda: hub_blobs.place(where, source, listed, metadata))
        metadata = []
    files = listed.matching(needed_files(folder, card, layers))
    check_disk(card, folder, files)
    poller = _Poller(card, folder, files, sink)
    poller.start()
    try:
        _guarded(source, lambda: hub_blobs.place(where, source, listed, [*metadata, *files]))
    except DownloadFailed as exc:
        poller.stop(failed=str(exc))
        raise
    poller.stop()
    return folder


def _guarded(source: HubRepo, step: Callable[[], T]) -> T:
    """A step that talks to the hub, its failure one clear reason (offline, unknown repo, gated, short file)."""
    try:
        return step()
    except ranged_fetch.ShortDownload as exc:
        raise DownloadFailed(str(exc)) from exc
    except Exception as exc:  # noqa: BLE001 - the part a killed or failed transfer kept: the next try resumes it
        raise DownloadFailed(_failure(source.repo_id, exc)) from exc


def needed_files(folder: Path, card: ModelCard, layers: tuple[int, int] | None) -> list[str]:
    index = folder / INDEX_FILE
    if layers is not None and index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map", {})
        return files_for_layers(weight_map, *layers)
    return sorted(card.files) or ["model*.safetensors"]


def check_disk(card: ModelCard, folder: Path, files: list[str]) -> None:
    missing = [f for f in files if not (folder / f).is_file()]
    need = sum(card.files.get(f, 0) for f in missing) - _incomplete_bytes(folder)
    root = cache_dir()
    probe = next(p for p in (root, *root.parents) if p.exists())
    if problem := disk_problem(card.model_id, need, shutil.disk_usage(probe).free, str(root)):
        raise DownloadFailed(problem)


def _failure(repo_id: str, exc: BaseException) -> str:
    from huggingface_hub import get_token

    return hub_failure(repo_id, exc, token_set=bool(get_token())).reason


def _cached_snapshot(source: HubRepo) -> Path | None:
    ref = repo_dir(source.repo_id) / "refs" / source.revision
    commit = ref.read_text().strip() if ref.is_file() else source.revision
    folder = repo_dir(source.repo_id) / "snapshots" / commit
    return folder if (folder / "config.json").is_file() else None


def _holds(folder: Path, files: list[str]) -> bool:
    if files == ["model*.safetensors"]:
        return any(folder.glob("model*.safetensors"))
    return all((folder / f).is_file() for f in files)


def _incomplete_bytes(folder: Path) -> int:
    return hub_blobs.incomplete_bytes(folder.parent.parent)


def _progress(card: ModelCard, state: str, files: list[str], folder: Path, speed: float, base: int,
              error: str = "") -> DownloadProgress:  # fmt: skip
    total = sum(card.files.get(f, 0) for f in files) or card.storage_bytes
    done = sum(card.files.get(f, 0) for f in files if (folder / f).is_file()) + _incomplete_bytes(folder)
    done = total if state == "done" else min(done, total)
    assert isinstance(card.source, HubRepo)
    return DownloadProgress(card.model_id, card.source.repo_id, state, done, total, round(speed, 1),  # type: ignore[arg-type]
                            eta_seconds(done, total, speed), error, tuple(files))  # fmt: skip


class _Poller:
    """Reads the bytes written so far every PROGRESS_PERIOD_S while snapshot_download runs in this thread."""

    def __init__(self, card: ModelCard, folder: Path, files: list[str], sink: ProgressSink) -> None:
        self.card, self.folder, self.files, self.sink = card, folder, files, sink
        self.base = _progress(card, "downloading", files, folder, 0.0, 0).bytes_done  # resumed bytes: not speed
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="download-progress")

    def start(self) -> None:
        self.sink(_progress(self.card, "downloading", self.files, self.folder, 0.0, 0))
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(PROGRESS_PERIOD_S):
            self.sink(self._now("downloading"))

    def _now(self, state: str, error: str = "") -> DownloadProgress:
        report = _progress(self.card, state, self.files, self.folder, 0.0, 0, error)
        speed = (report.bytes_done - self.base) / max(time.monotonic() - self.started, 1e-3)
        return _progress(self.card, state, self.files, self.folder, max(speed, 0.0), 0, error)

    def stop(self, failed: str = "") -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sink(self._now("failed" if failed else "done", failed))


def list_cached() -> list[CachedModel]:
    """Every model repo in the cache, newest snapshot each, with its size on disk."""
    out = []
    root = cache_dir()
    for repo in sorted(root.glob("models--*")) if root.is_dir() else []:
        repo_id = repo.name.removeprefix("models--").replace("--", "/", 1)
        snapshots = sorted((repo / "snapshots").glob("*"), key=lambda p: p.stat().st_mtime)
        if not snapshots:
            continue
        folder = snapshots[-1]
        files = [p for p in folder.rglob("*") if p.is_file()]
        size = sum(p.stat().st_size for p in (repo / "blobs").glob("*") if p.is_file())
        complete = _complete(folder)
        out.append(CachedModel(repo_id, folder.name, size, len(files), str(folder), complete))
    return out


def _complete(folder: Path) -> bool:
    index = folder / INDEX_FILE
    if index.is_file():
        names = set(json.loads(index.read_text()).get("weight_map", {}).values())
        return all((folder / n).is_file() for n in names)
    return any(folder.glob("model*.safetensors"))


def remove_cached(repo_id: str) -> bool:
    folder = repo_dir(repo_id)
    if not folder.is_dir():
        return False
    shutil.rmtree(folder)
    return True
