"""Read a range of rows of one tensor straight from a model folder's safetensors files.

MLX loads a tensor whole when any slice of it is evaluated, so a rank that keeps only its slice of a
vocabulary-sized head would first hold the whole matrix (113 MB for SmolLM2 in float32, 2 GB for a 128k x
8192 bf16 head). Rows of a row-major tensor are one contiguous byte range of the file: this reads only
those bytes. The format: an 8-byte little-endian header length, a JSON header naming each tensor's dtype,
shape and byte offsets, then the data.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import mlx.core as mx
import numpy as np

# safetensors dtype -> (numpy dtype of the raw bytes, mlx dtype to view them as, or None when numpy's is it)
DTYPES: dict[str, tuple[str, mx.Dtype | None]] = {
    "F32": ("<f4", None),
    "F16": ("<f2", None),
    "BF16": ("<u2", mx.bfloat16),
    "U32": ("<u4", None),
    "I32": ("<i4", None),
    "U8": ("u1", None),
    "I8": ("i1", None),
}


def header(path: Path) -> tuple[int, dict]:
    """(offset of the data section, the JSON header) of one safetensors file."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        return 8 + length, json.loads(f.read(length))


def read_rows(folder: Path, name: str, start: int, end: int) -> mx.array | None:
    """Rows [start, end) of tensor `name` from the folder's model*.safetensors, or None when no file holds
    it (or in a dtype not handled here): the caller then slices the lazily loaded tensor instead."""
    for path in sorted(Path(folder).glob("*.safetensors")):
        data_start, entries = header(path)
        entry = entries.get(name)
        if entry is None:
            continue
        raw, view = DTYPES.get(entry["dtype"], (None, None))
        shape = entry["shape"]
        if raw is None or not shape or not 0 <= start <= end <= shape[0]:
            return None
        begin, finish = entry["data_offsets"]
        row_bytes = (finish - begin) // shape[0]
        with open(path, "rb") as f:
            f.seek(data_start + begin + start * row_bytes)
            buffer = f.read((end - start) * row_bytes)
        rows = mx.array(np.frombuffer(buffer, dtype=raw).reshape(end - start, *shape[1:]))
        return rows.view(view) if view is not None else rows
    return None
