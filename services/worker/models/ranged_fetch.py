"""One file by several Range requests at once, into one part file, resumable after a kill.

A large file is cut into up to MAX_PIECES pieces fetched concurrently (each its own connection) and written at
their offsets into a part file of the full size. Beside the part, `<part>.pieces` records how far each piece
has come (rewritten atomically every half second), so a killed download resumes each piece about where it
stopped and progress can be read from disk. A part without that record (a file that comes by one request)
holds a contiguous prefix and resumes from its end.

How many pieces (pieces_for): over plain HTTP, where body_copy.py moves the bytes by splice(2), one stream keeps
up with a file copy and more only contend for the cores; over HTTPS each connection decrypts on a core of its
own, and a single stream over the internet is bounded by its latency and one server's pace (which is why
huggingface-hub's own fast paths, hf_transfer and hf_xet, download in parallel)."""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from services.worker.models.body_copy import copy_body, splices

MAX_PIECES = 4
MIN_PIECE_BYTES = 32 * 2**20  # a file under twice this comes by one request
CHUNK_BYTES = 4 * 2**20
# The record goes to disk at most this often (and when a piece fails): rewriting it after every chunk cost a
# fifth of the throughput here; a kill loses at most this long of progress.
RECORD_PERIOD_S = 0.5
TIMEOUT_S = 60.0  # a connection, or a wait for the next bytes
PIECES_SUFFIX = ".pieces"

Piece = list[int]  # [start, done, stop): bytes [start, done) are in the part


class ShortDownload(RuntimeError):
    """The server sent fewer (or more) bytes than the listing says the file has."""


def plan(size: int, have: int = 0, max_pieces: int = MAX_PIECES, min_piece: int = MIN_PIECE_BYTES) -> list[Piece]:
    """The pieces of [have, size) still to fetch, the first `have` bytes being there. Pure."""
    left = size - have
    if left <= 0:
        return [[0, size, size]]
    count = max(1, min(max_pieces, left // min_piece))
    bounds = [have + left * i // count for i in range(count + 1)]
    return [[bounds[i], bounds[i], bounds[i + 1]] for i in range(count)]


def pieces_for(url: str) -> int:
    """Over plain HTTP where splice(2) moves the bytes (body_copy.py) one stream already keeps up with a file
    copy, and more only contend for the cores (4 pieces: 0.64 of a copy, 1: 0.74, bench/download.py); over
    HTTPS each connection decrypts on its own core, and a single stream over the internet is bounded by its
    latency, so a large file comes in several pieces."""
    return 1 if url.startswith("http://") and splices() else MAX_PIECES


def bytes_held(pieces: list[Piece]) -> int:
    return pieces[0][0] + sum(done - start for start, done, _ in pieces) if pieces else 0


def read_pieces(part: Path) -> list[Piece] | None:
    record = part.with_name(part.name + PIECES_SUFFIX)
    try:
        pieces = json.loads(record.read_text())["pieces"]
    except (OSError, ValueError, KeyError):
        return None
    return [[int(a), int(b), int(c)] for a, b, c in pieces]


def held_bytes(part: Path) -> int:
    """What a part holds so far: from its record, or its size when it has none (a sequential part)."""
    pieces = read_pieces(part)
    if pieces is not None:
        return bytes_held(pieces)
    return part.stat().st_size if part.exists() else 0


def fetch(opener: urllib.request.OpenerDirector, url: str, part: Path, headers: dict[str, str], size: int,
          min_piece: int = MIN_PIECE_BYTES, chunk: int = CHUNK_BYTES, max_pieces: int | None = None) -> None:  # fmt: skip
    """The file into `part`, whole: the pieces still missing, several at once (one: appended, with no record)."""
    pieces = read_pieces(part) if part.exists() else None
    if pieces is None:
        have = part.stat().st_size if part.exists() else 0
        pieces = plan(size, have, max_pieces or pieces_for(url), min_piece)
        if len(pieces) == 1:
            _sequential(opener, url, part, headers, size, have, chunk)
            return
    record = _Record(part, pieces)
    record.write()
    with open(part, "ab") as out:
        out.truncate(size)  # full size now: each piece writes at its offset (the first bytes stay as they were)
    fd = os.open(part, os.O_WRONLY)
    try:
        todo = [i for i, (_, done, stop) in enumerate(pieces) if done < stop]
        with ThreadPoolExecutor(max_workers=max(1, len(todo)), thread_name_prefix="hub-piece") as pool:
            for result in [pool.submit(_piece, opener, url, fd, headers, record, i, chunk) for i in todo]:
                result.result()
    finally:
        os.close(fd)
        record.write()  # what came, exactly, for the next try
    if bytes_held(record.pieces) != size:
        raise ShortDownload(f"{part.name}: {bytes_held(record.pieces)} bytes received, {size} expected")
    record.remove()


def _sequential(opener: urllib.request.OpenerDirector, url: str, part: Path, headers: dict[str, str], size: int,
                have: int, chunk: int) -> None:  # fmt: skip
    """The rest of a file after the `have` bytes its part holds: one request, written on, the part's size its
    record."""
    if have < size:
        ranged = {"Range": f"bytes={have}-"} if have else {}
        with opener.open(urllib.request.Request(url, headers=headers | ranged), timeout=TIMEOUT_S) as answer:
            fd = os.open(part, os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                if have and answer.status != 206:  # the server ignored the range: start the file over
                    os.ftruncate(fd, 0)
                    have = 0
                copy_body(answer, fd, have, size, chunk, TIMEOUT_S, lambda _end: None)
            finally:
                os.close(fd)
    elif not part.exists():
        part.touch()  # an empty file
    if part.stat().st_size != size:
        raise ShortDownload(f"{part.name}: {part.stat().st_size} bytes received, {size} expected")


def _piece(opener: urllib.request.OpenerDirector, url: str, fd: int, headers: dict[str, str], record: _Record,
           i: int, chunk: int) -> None:  # fmt: skip
    start, done, stop = record.pieces[i]
    ranged = headers | {"Range": f"bytes={done}-{stop - 1}"}
    with opener.open(urllib.request.Request(url, headers=ranged), timeout=TIMEOUT_S) as answer:
        if answer.status != 206 and done > 0:
            raise ShortDownload(f"the server ignored the range bytes={done}-{stop - 1} (status {answer.status})")
        done = copy_body(answer, fd, done, stop, chunk, TIMEOUT_S, lambda end: record.advance(i, end))
    if done != stop:
        raise ShortDownload(f"bytes {start}-{stop - 1}: the answer ended at {done}")


class _Record:
    """The pieces' progress, shared by their threads, on disk every RECORD_PERIOD_S (atomically: a kill leaves
    the previous record or the next, never half of one; the bytes it counts are written before it says so)."""

    def __init__(self, part: Path, pieces: list[Piece]) -> None:
        self.path = part.with_name(part.name + PIECES_SUFFIX)
        self.pieces = pieces
        self._lock = threading.Lock()
        self._written = 0.0

    def advance(self, i: int, done: int) -> None:
        with self._lock:
            self.pieces[i][1] = done
            if time.monotonic() - self._written >= RECORD_PERIOD_S:
                self._write()

    def write(self) -> None:
        with self._lock:
            self._write()

    def _write(self) -> None:
        scratch = self.path.with_name(f"{self.path.name}.{threading.get_ident()}")
        scratch.write_text(json.dumps({"pieces": self.pieces}))
        os.replace(scratch, self.path)
        self._written = time.monotonic()

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
