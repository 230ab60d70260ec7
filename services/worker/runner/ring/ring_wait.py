"""Make MLX's ring backend wait for data in the kernel instead of spinning on the CPU.

MLX's ring backend (mlx/distributed/ring/ring.cpp, `SocketThread`) gives every ring socket a thread that
loops on a NON-BLOCKING `recv` while a receive is pending: a rank that waits for a peer (a pipeline
stage waiting for the previous stage, a follower waiting for rank 0's next step, an idle instance)
keeps one core at 100 % for as long as it waits (strace: ~8,000 `recvfrom` -> EAGAIN per second).
Where ranks share cores (several nodes on one machine, or a laptop) the waiting ranks take the CPU the
working rank needs; on any machine an idle instance burns a core per rank.

The fix needs no change to MLX: after `mx.distributed.init`, this rank's ring sockets are switched back
to BLOCKING mode with a receive/send timeout (`SO_RCVTIMEO`/`SO_SNDTIMEO`, `WAIT_S`). The same loop then
sleeps in `recv` until data arrives (the kernel wakes it at once) or the timeout passes, when `recv`
returns EAGAIN exactly as a non-blocking socket would, and MLX's loop goes round (checking its stop flag
and any send queued on the same socket). So nothing in MLX's logic changes; a send queued on a socket
whose thread is sleeping in `recv` waits at most `WAIT_S` (MLX's collectives send and receive on
different sockets, so this happens only for large two-way transfers).

The ring's sockets are told apart from the runner's other sockets (the NATS connection) by address:
this rank's left sockets were accepted on its own hostfile address, its right sockets connect to its
right neighbour's. `EXO_RING_WAIT=spin` keeps MLX's behaviour (lowest latency where every rank has
cores to spare).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import socket
import struct
from collections.abc import Iterable
from pathlib import Path

import structlog

log = structlog.get_logger()

WAIT_S = 0.002
MODES = ("block", "spin")


def ring_endpoints(hostfile: list[list[str]], rank: int) -> tuple[set[tuple[str, int]], set[tuple[str, int]]]:
    """(addresses this rank listens on, addresses of its right neighbour) from a ring hostfile."""

    def parse(entry: str) -> tuple[str, int]:
        host, _, port = entry.rpartition(":")
        return host.strip("[]"), int(port)

    size = len(hostfile)
    right = (rank + 1) % size
    return {parse(e) for e in hostfile[rank]}, {parse(e) for e in hostfile[right]}


def ring_connect_reason(error: str, rank: int, hostfile: list[list[str]]) -> str | None:
    """A clear reason for MLX's "[ring] Couldn't connect (error: N)" (it gives no address), or None for other
    errors. MLX has retried for about 30 s by then: the neighbour's rank is not up, or not at that address."""
    match = re.search(r"Couldn't connect \(error: (\d+)\)", error)
    if match is None or not hostfile:
        return None
    code = int(match.group(1))
    right = (rank + 1) % len(hostfile)
    where = ", ".join(hostfile[right])
    reason = (f"ring: rank {rank} could not connect to rank {right} at {where} ({os.strerror(code)}, error {code}) "
              f"after MLX's retries: that rank's runner is not up, or the address does not reach it")  # fmt: skip
    hosts = {entry.rpartition(":")[0].strip("[]") for entries in hostfile for entry in entries}
    if len(hostfile) > 1 and all(h in ("127.0.0.1", "::1", "localhost") for h in hosts):
        reason += " (every rank is on loopback: its nodes were taken to be one machine)"
    return reason


def is_ring_socket(local: tuple, peer: tuple | None, mine: set, right: set) -> bool:
    """A connected TCP socket belongs to the ring when it was accepted on one of this rank's listening
    addresses (left neighbour) or connects to one of the right neighbour's (an accepted socket keeps the
    listening port as its local port)."""
    if peer is None:
        return False
    return (local[0], local[1]) in mine or (peer[0], peer[1]) in right


def _open_fds() -> Iterable[int]:
    directory = "/proc/self/fd" if os.path.isdir("/proc/self/fd") else "/dev/fd"
    for name in os.listdir(directory):
        if name.isdigit():
            yield int(name)


def _addresses(fd: int) -> tuple[tuple, tuple | None] | None:
    try:
        s = socket.socket(fileno=fd)
    except OSError:
        return None
    try:
        if s.type != socket.SOCK_STREAM or s.family not in (socket.AF_INET, socket.AF_INET6):
            return None
        local = s.getsockname()
        try:
            peer = s.getpeername()
        except OSError:
            peer = None
        return local, peer
    finally:
        s.detach()  # the fd stays MLX's


def block_with_timeout(fd: int, wait_s: float = WAIT_S) -> None:
    """Clear O_NONBLOCK on `fd` and give it receive and send timeouts of `wait_s`."""
    seconds = int(wait_s)
    timeval = struct.pack("ll", seconds, int((wait_s - seconds) * 1_000_000))
    s = socket.socket(fileno=fd)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
    finally:
        s.detach()
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)


def quiet_ring(rank: int, hostfile_path: str | None = None, mode: str = "block") -> int:
    """Switch this rank's ring sockets to blocking-with-timeout; returns how many were switched.

    Call right after `mx.distributed.init(backend="ring")`, on the thread that called it. Does nothing
    with mode "spin" (the runner setting EXO_RING_WAIT) or without a hostfile (not a ring group)."""
    if mode not in MODES:
        raise ValueError(f"EXO_RING_WAIT must be one of {', '.join(MODES)}, not {mode!r}")
    path = hostfile_path or os.environ.get("MLX_HOSTFILE")
    if mode == "spin" or not path:
        return 0
    mine, right = ring_endpoints(json.loads(Path(path).read_text()), rank)
    switched = 0
    for fd in _open_fds():
        addresses = _addresses(fd)
        if addresses is not None and is_ring_socket(*addresses, mine, right):
            block_with_timeout(fd)
            switched += 1
    if switched:
        log.info("ring sockets wait in the kernel", sockets=switched, timeout_ms=WAIT_S * 1000)
    else:  # e.g. a hostfile naming hosts instead of addresses: MLX's busy-poll stays
        log.warning("found no ring socket to switch: waiting ranks keep MLX's busy-poll", hostfile=path)
    return switched
