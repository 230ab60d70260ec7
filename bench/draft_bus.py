"""The draft-model mode of bench/speculative.py: the draft model in a process of its own (as a draft instance's
runner: drafting.Drafter on one MLX thread), asked over a bare nats-server on loopback by the main engine's
ModelDraft (the runner's bridge: run_coroutine_threadsafe from the engine thread), so a measured run pays what
the product pays for the bus, and the propose round trip can be timed alone (k = 0: no model step).

    .venv/bin/python -m bench.draft_bus serve NATS_URL SUBJECT MODEL_DIR   (started by DraftBus)"""

from __future__ import annotations

import asyncio
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import msgspec

from services.node.nats_server import nats_server_binary, wait_for_port
from services.worker.runner.serve.model_draft import ModelDraft, bridge
from shared.generation import DraftProposal, ProposeDraft, Speculation

SUBJECT = "bench.draft.propose"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _serve(url: str, subject: str, model_dir: str) -> None:
    import nats
    from mlx_lm import load

    from services.worker.runner.serve.drafting import Drafter

    model, tokenizer = load(model_dir)
    drafter = Drafter(model, getattr(tokenizer, "vocab_size", None))
    mlx = ThreadPoolExecutor(max_workers=1)
    nc = await nats.connect(url)
    loop = asyncio.get_running_loop()

    async def on(msg) -> None:  # noqa: ANN001
        ask = msgspec.json.decode(msg.data, type=ProposeDraft)
        proposal = await loop.run_in_executor(mlx, drafter.propose, ask, time.monotonic())
        if not ask.done:
            await msg.respond(msgspec.json.encode(proposal))

    await nc.subscribe(subject, cb=on)
    await nc.flush()
    print("serving", flush=True)
    await asyncio.Event().wait()


class DraftBus:
    """A nats-server, the draft process, and a client on a loop thread of its own; `drafts` for Engine.model_drafts."""

    def __init__(self, model_dir: Path) -> None:
        self._store = tempfile.TemporaryDirectory(prefix="bench-bus-")
        port = _free_port()
        self.url = f"nats://127.0.0.1:{port}"
        argv = [str(nats_server_binary()), "-a", "127.0.0.1", "-p", str(port), "-sd", self._store.name]
        self._server = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert wait_for_port("127.0.0.1", port, 10.0), "nats-server did not start"
        self._draft = subprocess.Popen([sys.executable, "-m", "bench.draft_bus", "serve", self.url, SUBJECT, str(model_dir)],
                                       stdout=subprocess.PIPE, text=True)  # fmt: skip
        assert self._draft.stdout is not None and self._draft.stdout.readline().strip() == "serving", "no draft process"
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        import nats

        self.nc = asyncio.run_coroutine_threadsafe(nats.connect(self.url), self.loop).result(10)
        self.ask, self.tell = bridge(self.nc, self.loop, SUBJECT)

    def drafts(self, request_id: str, speculation: Speculation, prompt: list[int]) -> ModelDraft:
        return ModelDraft(request_id, prompt, self.ask, self.tell)

    def round_trip_ms(self, context: list[int], k: int, calls: int = 30) -> float:
        """The median propose call, the context sent first: k = 0 is the bus and the runner's thread hop alone."""
        key = f"rt-{k}"
        self.ask(ProposeDraft(key, 0, context, k), 30.0)
        times = []
        for i in range(calls):
            start = time.perf_counter()
            reply: DraftProposal = self.ask(ProposeDraft(key, len(context) + i, [context[i % len(context)]], k), 30.0)
            times.append(time.perf_counter() - start)
            assert len(reply.tokens) == k
        self.tell(ProposeDraft(key, 0, [], 0, done=True))
        return 1000 * statistics.median(times)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.nc.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        for proc in (self._draft, self._server):
            proc.terminate()
            proc.wait(10)
        self._store.cleanup()


if __name__ == "__main__":
    if sys.argv[1:2] != ["serve"] or len(sys.argv) != 5:
        sys.exit(__doc__)
    asyncio.run(_serve(*sys.argv[2:5]))
