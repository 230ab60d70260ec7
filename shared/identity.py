"""This node's id: created once under the state directory and kept across restarts.

Discovery owns it; every service of the node reads the same file, so they agree on who they are.
"""

from __future__ import annotations

import os
from pathlib import Path

from shared.ids import NodeId, new_node_id


def node_id_path(state_dir: Path) -> Path:
    return state_dir / "node_id"


def load_or_create_node_id(state_dir: Path) -> NodeId:
    path = node_id_path(state_dir)
    if path.exists():
        text = path.read_text().strip()
        if text:
            return NodeId(text)
    state_dir.mkdir(parents=True, exist_ok=True)
    candidate = new_node_id()
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(candidate + "\n")
    try:
        os.link(tmp, path)  # atomic create-if-absent: two services starting at once agree on one id
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return NodeId(path.read_text().strip())
