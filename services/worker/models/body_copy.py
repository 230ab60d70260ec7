"""An HTTP answer's body into a file at an offset. Over plain HTTP on Linux the bytes go socket -> pipe -> file by
splice(2), inside the kernel: over loopback here a file then moved 0.99 of a plain file copy's speed, where
reading into Python and writing out moved 0.6 (bench/download.py; a LAN mirror of the hub is plain HTTP too).
Over HTTPS (the socket carries TLS records, not the body), on other systems, or for a chunked answer, the body is
read into one reused buffer and written at its offset."""

from __future__ import annotations

import fcntl
import http.client
import os
import select
import socket
from collections.abc import Callable

PIPE_BYTES = 2**20
F_SETPIPE_SZ = 1031  # Linux's fcntl for a pipe's capacity (fcntl.F_SETPIPE_SZ from Python 3.10 on Linux only)


def splices() -> bool:
    return hasattr(os, "splice")


def copy_body(answer: http.client.HTTPResponse, fd: int, offset: int, stop: int, chunk: int, timeout: float,
              progress: Callable[[int], None]) -> int:  # fmt: skip
    """Bytes [offset, stop) of the file from the answer (which starts at offset) into fd; calls progress(end) as
    they land. Returns where the bytes came to (stop, or short of it when the answer ended early)."""
    sock = _plain_socket(answer)
    if sock is not None and splices():
        return _spliced(answer, sock, fd, offset, stop, timeout, progress)
    buffer = memoryview(bytearray(max(1, min(chunk, stop - offset))))
    while offset < stop and (n := answer.readinto(buffer[: stop - offset])):
        os.pwrite(fd, buffer[:n], offset)
        offset += n
        progress(offset)
    return offset


def _plain_socket(answer: http.client.HTTPResponse) -> socket.socket | None:
    """The plain TCP socket under a fixed-length answer (not TLS: ssl.SSLSocket is a subclass, not this type)."""
    sock = getattr(getattr(answer.fp, "raw", None), "_sock", None)
    if type(sock) is not socket.socket or answer.chunked or answer.length is None:
        return None
    return sock


def _spliced(answer: http.client.HTTPResponse, sock: socket.socket, fd: int, offset: int, stop: int,
             timeout: float, progress: Callable[[int], None]) -> int:  # fmt: skip
    # What the client buffered past the headers is the body's first bytes: write it, then the socket's.
    head = answer.fp.peek()[: stop - offset]
    answer.fp.read(len(head))
    os.pwrite(fd, head, offset)
    offset += len(head)
    progress(offset)
    read_end, write_end = os.pipe()
    try:
        fcntl.fcntl(write_end, F_SETPIPE_SZ, PIPE_BYTES)
        waiting = select.poll()
        waiting.register(sock.fileno(), select.POLLIN)
        while offset < stop:
            try:  # the socket is non-blocking (it has a timeout): wait for bytes, then move what came
                moved = os.splice(sock.fileno(), write_end, min(stop - offset, PIPE_BYTES))
            except BlockingIOError:
                if not waiting.poll(timeout * 1000):
                    raise TimeoutError(f"no bytes for {timeout:.0f} s") from None
                continue
            if moved == 0:  # the answer ended
                break
            landed = 0
            while landed < moved:
                landed += os.splice(read_end, fd, moved - landed, offset_dst=offset + landed)
            offset += moved
            progress(offset)
    finally:
        os.close(read_end)
        os.close(write_end)
    return offset
