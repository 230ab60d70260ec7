"""The model imported once per test session and shared by every node the tests start.

Converting the GGUF costs a node launch tens of seconds on this machine, and the tests launch 14+ nodes. The
product is unchanged: before a node starts, its store (<state-dir>/models) gets hard links to the one complete
copy, marker included, so the worker finds the model ready. Nothing writes into a complete model folder, and
removing a node's links leaves the shared copy whole. The node import path itself stays covered: the session's
`node` imports for itself, and tests/integration/test_gguf_import.py checks the store.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from services.worker.models.store import ModelStore, default_weight_format
from shared.models import get_card


class SharedModels:
    def __init__(self, root: Path, model_id: str) -> None:
        self.store = ModelStore(root)
        self.card = get_card(model_id)

    def path(self, weight_format: str | None = None) -> Path:
        """The complete model folder, imported on first use (the format a node would choose, unless given)."""
        return self.store.ensure(self.card, weight_format or default_weight_format(self.card))

    def link_into(self, models_dir: Path) -> None:
        """Give a node's store (not yet started) the shared copy, in the format its worker will choose."""
        source = self.path()
        dest = models_dir / source.relative_to(self.store.root)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(source, dest, copy_function=_link_or_copy)


def _link_or_copy(source: str, dest: str) -> None:
    try:
        os.link(source, dest)
    except OSError:  # another filesystem (TMPDIR elsewhere): a copy is still faster than converting
        shutil.copy2(source, dest)
