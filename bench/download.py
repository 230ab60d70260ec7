"""Download throughput of a hub model from the tests' local mirror of the hub (tests/hub_mirror.py, over loopback
HTTP, through huggingface-hub and the worker's fetch), against a plain copy of the same files, in one run.

    .venv/bin/python -m bench.download [--mb 200] [--rounds 6]

Each round downloads into a fresh HF_HOME and copies into a fresh folder (both read the source from the page
cache), each round in another order (no way always runs first). The timed download is the worker's
(hub_download.fetch: listing, metadata, weights); the card is looked up once before, as the gateway does before
placing. The figure is the median of the rounds' ratios (download MB/s over copy MB/s; goal >= 0.8), with a
plain HTTP GET of the same files from the same mirror beside it (what loopback HTTP into Python costs by itself).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = "bench-org/tiny-llama"


def copy_files(source: Path, dest: Path, names: list[str]) -> float:
    dest.mkdir(parents=True)
    started = time.perf_counter()
    for name in names:
        shutil.copyfile(source / name, dest / name)
    os.sync()
    return time.perf_counter() - started


def raw_http(base_url: str, dest: Path, names: list[str]) -> float:
    """The transport alone: one plain GET per file from the same mirror (urllib, 1 MiB reads), no hub client."""
    dest.mkdir(parents=True)
    started = time.perf_counter()
    for name in names:
        with urllib.request.urlopen(f"{base_url}/{REPO}/resolve/main/{name}") as answer, open(dest / name, "wb") as out:
            while chunk := answer.read(2**20):
                out.write(chunk)
    os.sync()
    return time.perf_counter() - started


def card_of(lookup_home: Path):  # noqa: ANN201 - a ModelCard
    """The card, as the gateway looks it up before placing: once, into a cache of its own, outside the timing (on a
    cluster it is the gateway's lookup, and the downloading node's cache does not hold its files)."""
    from huggingface_hub import constants

    constants.HF_HUB_CACHE = str(lookup_home / "hub")
    from services.gateway.model_lookup import resolve_card

    return resolve_card(REPO, {})


def download(card, hf_home: Path) -> float:  # noqa: ANN001
    from huggingface_hub import constants

    constants.HF_HUB_CACHE = str(hf_home / "hub")  # the cache folder is read once at import; a fresh one each round
    from services.worker.models import hub_download

    started = time.perf_counter()
    hub_download.fetch(card, None, lambda _p: None)
    os.sync()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=200, help="padding added to the tiny model's weights")
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="exo-bench-download-"))
    from tests.hub_mirror import HubMirror

    mirror = HubMirror().start()
    os.environ |= {"HF_ENDPOINT": mirror.url, "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    os.environ.pop("HF_TOKEN", None)
    try:
        from tests.tiny_hub_model import build_tiny_llama, gguf_metadata

        source = build_tiny_llama(root / "source", gguf_metadata(), extra_bytes=args.mb * 2**20)
        mirror.add(REPO, source)
        names = [n for n in mirror.files(REPO) if n.endswith((".safetensors", ".json"))]
        total = sum((source / n).stat().st_size for n in names)
        card = card_of(root / "lookup")
        rounds = []
        ways = {"copy": lambda i: copy_files(source, root / f"copy-{i}", names),
                "raw_http": lambda i: raw_http(mirror.url, root / f"raw-{i}", names),
                "download": lambda i: download(card, root / f"hf-{i}")}  # fmt: skip
        order = list(ways)
        for i in range(args.rounds):
            seconds = {}
            for way in order[i % 3 :] + order[: i % 3]:  # each round starts with the next: no way always goes first
                seconds[way] = ways[way](i)
            rounds.append({f"{way}_mb_s": total / 1e6 / seconds[way] for way in order})
            for folder in ("copy", "raw", "hf"):
                shutil.rmtree(root / f"{folder}-{i}")
        over_copy = statistics.median(r["download_mb_s"] / r["copy_mb_s"] for r in rounds)
        over_raw = statistics.median(r["download_mb_s"] / r["raw_http_mb_s"] for r in rounds)
        print(json.dumps({"mb": round(total / 1e6, 1), "rounds": [{k: round(v, 1) for k, v in r.items()} for r in rounds],
                          "download_over_copy": round(over_copy, 2), "download_over_raw_http": round(over_raw, 2),
                          "goal": 0.8}, indent=2))  # fmt: skip
    finally:
        mirror.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
