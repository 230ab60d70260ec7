"""The instance's `mx.distributed` group, as a runner joins it and leaves it."""

from __future__ import annotations

import os

import mlx.core as mx

from services.worker.runner.model.sharding import ShardingError


def init_group(world_size: int, backend: str = "ring", ring_wait: str = "block") -> mx.distributed.Group | None:
    """Join the instance's group from the environment the worker wrote (MLX's own: MLX_RANK, MLX_HOSTFILE or
    the jaccl variables); None for a one-rank instance. `ring_wait`: see ring/ring_wait.py."""
    if world_size <= 1:
        return None
    if backend == "ring" and (hostfile := os.environ.get("MLX_HOSTFILE")) and (rank := os.environ.get("MLX_RANK")):
        from services.worker.runner.ring.ring_ports import check_ring_ports

        check_ring_ports(int(rank), hostfile)
    group = mx.distributed.init(strict=True, backend=backend)
    if group.size() != world_size:
        raise ShardingError(f"joined a group of {group.size()} ranks, expected {world_size}")
    if backend == "ring":
        from services.worker.runner.ring.ring_wait import quiet_ring

        quiet_ring(group.rank(), mode=ring_wait)
    return group


def sync_ranks(group: mx.distributed.Group | None) -> None:
    """Wait for this rank's queued work, then for every rank. Call after each generation and before a
    rank exits: mlx-lm's loop leaves one look-ahead step in flight, and a rank that exits while a peer
    still needs it for that step's collectives breaks the peer's ring ("connection to a peer was lost").

    The barrier runs on mlx-lm's generation stream, behind that work: on another stream it could run while
    a transfer of the step is still in flight, and the two would mix on the ring's sockets (seen: a
    barrier's bytes inside an activation)."""
    from mlx_lm.generate import generation_stream

    if group is not None and group.size() > 1:
        mx.eval(mx.distributed.all_sum(mx.array(1.0), group=group, stream=generation_stream))
    mx.synchronize(generation_stream)
    mx.synchronize()
