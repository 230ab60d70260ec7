"""Check, before MLX's ring backend binds them, that this rank's ring ports are free.

MLX reports a taken port as "[ring] Couldn't bind socket (error: 98)". The ports derive from the instance
id (services/worker/dataplane.py), so every retry of the same instance meets the same taken port: the
message should say which port, and what to do.
"""

from __future__ import annotations

import errno
import json
import socket
from pathlib import Path

from services.worker.runner.ring.ring_wait import ring_endpoints


class RingPortTaken(RuntimeError):
    """One of this rank's ring ports is held by another socket on this machine."""


def check_ring_ports(rank: int, hostfile_path: str) -> None:
    """Raise RingPortTaken when an address this rank must listen on cannot be bound right now."""
    mine, _ = ring_endpoints(json.loads(Path(hostfile_path).read_text()), rank)
    for host, port in sorted(mine):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as MLX binds: TIME_WAIT is no conflict
            try:
                probe.bind((host, port))
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                raise RingPortTaken(
                    f"ring port {host}:{port} of rank {rank} is held by another socket on this machine; "
                    "delete the instance and place it again (a new instance gets new ports)"
                ) from exc
