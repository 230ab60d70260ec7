"""`python -m tests.integration.hub_fetch MODEL [START END]`: what a worker does for a hub model, in a process of its
own (the tests kill it mid-download): derive the card, fetch the files, print each progress report and the
folder as JSON lines. The environment (HF_ENDPOINT, HF_HOME, HF_HUB_OFFLINE) is the test's."""

from __future__ import annotations

import json
import sys

import msgspec

from services.gateway.model_lookup import ModelLookupError, resolve_card
from services.worker.models import hub_download


def main(argv: list[str]) -> int:
    try:
        card = resolve_card(argv[0], {})
    except ModelLookupError as exc:
        print(json.dumps({"error": exc.reason, "status": exc.status, "code": exc.code}), flush=True)
        return 1
    print(json.dumps({"card": msgspec.to_builtins(card)}), flush=True)
    layers = (int(argv[1]), int(argv[2])) if len(argv) == 3 else None
    try:
        folder = hub_download.fetch(card, layers, lambda p: print(json.dumps({"progress": msgspec.to_builtins(p)}), flush=True))
    except hub_download.DownloadFailed as exc:
        print(json.dumps({"error": str(exc)}), flush=True)
        return 1
    print(json.dumps({"folder": str(folder)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
