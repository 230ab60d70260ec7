"""Ring sockets that wait in the kernel: services/worker/runner/ring/ring_wait.py (which sockets, and what the
switch does to a real socket). The end-to-end effect on a waiting rank's CPU is in
tests/integration/test_ring_ranks.py."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time

import pytest

from services.worker.runner.ring.ring_wait import (
    WAIT_S,
    block_with_timeout,
    is_ring_socket,
    quiet_ring,
    ring_connect_reason,
    ring_endpoints,
)


def test_ring_endpoints_are_own_listen_addresses_and_right_neighbours():
    hostfile = [["127.0.0.1:40001"], ["127.0.0.1:40002"], ["10.0.0.3:40003", "10.0.1.3:40004"]]
    assert ring_endpoints(hostfile, 0) == ({("127.0.0.1", 40001)}, {("127.0.0.1", 40002)})
    assert ring_endpoints(hostfile, 1) == ({("127.0.0.1", 40002)}, {("10.0.0.3", 40003), ("10.0.1.3", 40004)})
    # the last rank's right neighbour is rank 0
    assert ring_endpoints(hostfile, 2)[1] == {("127.0.0.1", 40001)}


def test_only_sockets_of_the_ring_are_picked():
    mine, right = {("127.0.0.1", 40001)}, {("127.0.0.1", 40002)}
    assert is_ring_socket(("127.0.0.1", 40001), ("127.0.0.1", 51234), mine, right)  # accepted from the left
    assert is_ring_socket(("127.0.0.1", 51235), ("127.0.0.1", 40002), mine, right)  # connected to the right
    assert not is_ring_socket(("127.0.0.1", 51236), ("127.0.0.1", 4222), mine, right)  # the NATS connection
    assert not is_ring_socket(("127.0.0.1", 40001), None, mine, right)  # a listener
    assert not is_ring_socket(("0.0.0.0", 40002), ("127.0.0.1", 9), mine, right)


def test_switched_socket_sleeps_in_recv_until_data_or_the_timeout():
    a, b = socket.socketpair()
    try:
        a.setblocking(False)  # as MLX leaves its ring sockets
        with pytest.raises(BlockingIOError):
            os.read(a.fileno(), 1)
        block_with_timeout(a.fileno())
        assert not fcntl.fcntl(a.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK
        started = time.monotonic()
        try:
            a.recv(16)
            raise AssertionError("recv returned data that was never sent")
        except OSError as exc:  # the receive timeout: EAGAIN, exactly what MLX's loop expects
            assert exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK)
        assert time.monotonic() - started >= WAIT_S * 0.8
        b.sendall(b"hi")
        assert a.recv(16) == b"hi"  # data wakes it at once
    finally:
        a.close()
        b.close()


def test_quiet_ring_leaves_other_sockets_alone(tmp_path):
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    other = socket.create_server(("127.0.0.1", 0))
    ring_out = socket.create_connection(("127.0.0.1", port))  # "rank 0 connects to its right neighbour"
    ring_in, _ = listener.accept()
    stray = socket.create_connection(other.getsockname())
    stray_in, _ = other.accept()
    for s in (ring_out, ring_in, stray, stray_in):
        s.setblocking(False)
    hostfile = tmp_path / "hostfile.json"
    # rank 0 listens on `port`... and its right neighbour also listens there (one process plays both)
    hostfile.write_text(json.dumps([[f"127.0.0.1:{port}"], [f"127.0.0.1:{port}"]]))
    try:
        assert quiet_ring(0, str(hostfile), mode="block") == 2
        assert not fcntl.fcntl(ring_out.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK
        assert not fcntl.fcntl(ring_in.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK
        assert fcntl.fcntl(stray.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK
        assert fcntl.fcntl(stray_in.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK
        assert quiet_ring(0, str(hostfile), mode="spin") == 0
        with pytest.raises(ValueError, match="EXO_RING_WAIT"):
            quiet_ring(0, str(hostfile), mode="poll")
    finally:
        for s in (ring_out, ring_in, stray, stray_in, listener, other):
            s.close()


def test_a_ring_that_cannot_connect_says_where_and_why():
    """Issue 17: MLX says only "[ring] Couldn't connect (error: 111)"; the runner's failure names the peer."""
    loopback = [["127.0.0.1:24000"], ["127.0.0.1:24001"], ["127.0.0.1:24002"]]
    reason = ring_connect_reason("[ring] Couldn't connect (error: 111)", 1, loopback)
    assert reason is not None
    assert "rank 1 could not connect to rank 2 at 127.0.0.1:24002" in reason and "refused" in reason.lower()
    assert "every rank is on loopback" in reason
    spread = [["10.0.0.1:24000"], ["10.0.0.2:24001"]]
    reason = ring_connect_reason("[ring] Couldn't connect (error: 113)", 1, spread)
    assert "rank 0 at 10.0.0.1:24000" in reason and "loopback" not in reason
    assert ring_connect_reason("[ring] Couldn't bind socket (error: 98)", 0, spread) is None
    assert ring_connect_reason("something else", 0, spread) is None
