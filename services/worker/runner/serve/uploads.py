"""The runner's side of a request too large for one bus message (see services/gateway/uploads.py): fetch its
pieces from the gateway that serves them, and join them."""

from __future__ import annotations

import msgspec
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError

from shared.generation import MAX_UPLOAD_BYTES, GenerateUpload

PIECE_TIMEOUT_S = 10.0


class UploadFailed(Exception):
    pass


async def fetch(nc: NATS, data: bytes) -> bytes:
    """The whole request that the GenerateUpload in `data` stands for."""
    try:
        upload = msgspec.json.decode(data, type=GenerateUpload)
    except msgspec.DecodeError as exc:
        raise UploadFailed(f"unreadable upload: {exc}") from None
    if not 0 < upload.size <= MAX_UPLOAD_BYTES or not 0 < upload.pieces <= upload.size:
        raise UploadFailed(f"a request of {upload.size} bytes in {upload.pieces} pieces is refused "
                           f"(at most {MAX_UPLOAD_BYTES} bytes)")  # fmt: skip
    parts = []
    try:
        for index in range(upload.pieces):
            parts.append((await nc.request(upload.source, str(index).encode(), PIECE_TIMEOUT_S)).data)
    except (NatsError, TimeoutError) as exc:
        raise UploadFailed(f"piece {len(parts)} of {upload.pieces} did not arrive: {type(exc).__name__}") from None
    whole = b"".join(parts)
    if len(whole) != upload.size:
        raise UploadFailed(f"the pieces hold {len(whole)} bytes, not {upload.size}")
    return whole
