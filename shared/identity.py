"""This node's id: created once under the state directory and kept across restarts.

Discovery owns it; every service of the node reads the same file, so they agree on who they are.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from shared.ids import NodeId, new_node_id


def node_id_path(state_dir: Path) -> Path:
    return state_dir / "node_id"


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return ""


def load_or_create_node_id(state_dir: Path) -> NodeId:
    path = node_id_path(state_dir)
    if text := _read(path):
        return NodeId(text)
    state_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=state_dir, prefix=".node_id.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(new_node_id() + "\n")
        if path.exists() and not _read(path):
            path.unlink(missing_ok=True)  # an empty file left by a crash mid-write is no id
        try:
            os.link(tmp, path)  # atomic create-if-absent: services starting at once agree on one id
        except FileExistsError:
            pass
    finally:
        os.unlink(tmp)
    return NodeId(_read(path))
