"""A local stand-in for the Hugging Face hub (the real one cannot be reached here): enough of its file API for
huggingface-hub 2.4 to list, resolve and download a repo (`HF_ENDPOINT=http://127.0.0.1:PORT`).

Served: GET /api/models/{repo}/revision/{rev} (repo info with siblings and sizes), GET /api/models/{repo}/tree/{rev}
(the file listing snapshot_download reads), HEAD and GET (with Range) /{repo}/resolve/{rev}/{file} carrying ETag,
X-Repo-Commit and Content-Length. Repos can be marked gated (403 X-Error-Code: GatedRepo without a token); unknown
repos answer 404 X-Error-Code: RepoNotFound, as the hub does. `throttle_bytes_per_s` slows file bodies so a test
can kill a download mid-file; `ranges` records every Range header a request carried.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

CHUNK = 64 * 1024


class HubMirror:
    def __init__(self) -> None:
        self.repos: dict[str, Path] = {}
        self.gated: set[str] = set()
        self.throttle_bytes_per_s: float | None = None
        self.broken: set[str] = set()  # repos whose weight files are listed but answered 500 (a failing hub)
        self.ranges: list[tuple[str, str]] = []  # (file, Range header) of each ranged GET
        self.bytes_sent = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="hub-mirror")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def add(self, repo_id: str, folder: Path, gated: bool = False) -> None:
        self.repos[repo_id] = folder
        if gated:
            self.gated.add(repo_id)

    def commit(self, repo_id: str) -> str:
        listing = "".join(f"{n}:{s}" for n, s in sorted(self.files(repo_id).items()))
        return hashlib.sha1(f"{repo_id}|{listing}".encode()).hexdigest()

    def files(self, repo_id: str) -> dict[str, int]:
        folder = self.repos[repo_id]
        return {p.relative_to(folder).as_posix(): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}

    def etag(self, repo_id: str, name: str) -> str:
        path = self.repos[repo_id] / name
        return hashlib.sha256(f"{name}:{path.stat().st_size}:{path.stat().st_mtime_ns}".encode()).hexdigest()

    def start(self) -> HubMirror:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(mirror: HubMirror) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in separate writes: with Nagle's algorithm on, the client's delayed ACK holds
        # the body ~40 ms on every small answer, a stall of this server that the hub's own servers do not have.
        disable_nagle_algorithm = True

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self._route(body=True)

        def do_HEAD(self) -> None:
            self._route(body=False)

        def _route(self, body: bool) -> None:
            path = unquote(urlparse(self.path).path)
            parts = path.strip("/").split("/")
            if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] in ("revision", "tree"):
                repo = "/".join(parts[2:4])
                if self._refused(repo):
                    return
                self._json(self._info(repo) if parts[4] == "revision" else self._tree(repo))
            elif len(parts) >= 5 and parts[2] == "resolve":
                repo = "/".join(parts[:2])
                if not self._refused(repo):
                    self._file(repo, "/".join(parts[4:]), body)
            else:
                self._error(404, "EntryNotFound", "no such route")

        def _refused(self, repo: str) -> bool:
            if repo not in mirror.repos:
                self._error(404, "RepoNotFound", f"Repository Not Found for url: {self.path}")
                return True
            if repo in mirror.gated and not self.headers.get("Authorization"):
                self._error(403, "GatedRepo", f"Access to model {repo} is restricted.")
                return True
            return False

        def _info(self, repo: str) -> dict:
            siblings = [{"rfilename": n, "size": s, "blobId": mirror.etag(repo, n)} for n, s in mirror.files(repo).items()]
            return {"id": repo, "modelId": repo, "sha": mirror.commit(repo), "private": False,
                    "gated": repo in mirror.gated, "siblings": siblings, "tags": []}  # fmt: skip

        def _tree(self, repo: str) -> list[dict]:
            return [{"type": "file", "path": n, "size": s, "oid": mirror.etag(repo, n)} for n, s in mirror.files(repo).items()]

        def _file(self, repo: str, name: str, body: bool) -> None:
            path = mirror.repos[repo] / name
            if repo in mirror.broken and name.endswith(".safetensors"):
                self._error(500, "InternalError", f"{name} cannot be served")
                return
            if not path.is_file():
                self._error(404, "EntryNotFound", f"{name} not in {repo}")
                return
            size = path.stat().st_size
            start, end = 0, size - 1
            ranged = self.headers.get("Range")
            if ranged and body:
                mirror.ranges.append((name, ranged))
                first, _, last = ranged.removeprefix("bytes=").partition("-")
                start, end = int(first or 0), int(last) if last else size - 1
            self.send_response(206 if ranged and body else 200)
            self.send_header("ETag", f'"{mirror.etag(repo, name)}"')
            self.send_header("X-Repo-Commit", mirror.commit(repo))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(end - start + 1 if body else size))
            if ranged and body:
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.end_headers()
            if body:
                self._send(path, start, end + 1)

        def _send(self, path: Path, start: int, stop: int) -> None:
            with open(path, "rb") as f:
                if not mirror.throttle_bytes_per_s:  # full speed: the kernel copies file to socket
                    self.wfile.flush()
                    try:
                        mirror.bytes_sent += self.connection.sendfile(f, start, stop - start)
                    except (BrokenPipeError, ConnectionResetError):
                        pass
                    return
                f.seek(start)
                left = stop - start
                while left > 0:
                    chunk = f.read(min(CHUNK, left))
                    try:
                        self.wfile.write(chunk)
                    except (BrokenPipeError, ConnectionResetError):
                        return
                    left -= len(chunk)
                    mirror.bytes_sent += len(chunk)
                    if mirror.throttle_bytes_per_s:
                        time.sleep(len(chunk) / mirror.throttle_bytes_per_s)

        def _json(self, data: object) -> None:
            payload = json.dumps(data).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def _error(self, status: int, code: str, message: str) -> None:
            payload = json.dumps({"error": message}).encode()
            self.send_response(status)
            self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", message)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

    return Handler
