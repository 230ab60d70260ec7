"""One rank of an MLX ring group that exchanges controls (services/worker/runner/serve/control.py), for
tests/integration/test_ring_ranks.py.

    MLX_RANK=r MLX_HOSTFILE=hosts.json python tests/integration/ring_ranks.py --world 2 --idle-s 3 --prompt-tokens 4000

Rank 0 waits --idle-s seconds, then posts a control holding one submit with a --prompt-tokens long prompt,
then a cancel. The other ranks post nothing and take what rank 0 posted: while rank 0 waits they wait for
the control's block. Between posting and taking, every rank does what a pipeline step does on the same
stream: receives an activation from the previous rank and sends one to the next, so a control transfer
out of its place would mix with it. Prints one JSON line: rank, CPU seconds spent in the first take, the
controls taken, the activations received.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from services.worker.runner.serve.control import Control, ControlChannel, Submit  # noqa: E402
from services.worker.runner.group import init_group, sync_ranks  # noqa: E402
from shared.generation import SamplingParams  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--idle-s", type=float, default=3.0)
    parser.add_argument("--prompt-tokens", type=int, default=4000)
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--ring-wait", default="block")  # the runner setting EXO_RING_WAIT
    args = parser.parse_args()
    group = init_group(args.world, ring_wait=args.ring_wait)
    rank = group.rank()
    received = []

    def step(value: float) -> None:
        """A pipeline stage's hand-off on mlx-lm's stream, queued without waiting (as the model's is)."""
        import mlx.core as mx
        from mlx_lm.generate import generation_stream

        h = mx.full((4, 576), value)
        if rank > 0:  # a stage's work: the received activation, plus one
            h = mx.distributed.recv_like(h, rank - 1, group=group, stream=generation_stream)
            received.append(h)
            h = h + 1
        if rank < group.size() - 1:
            h = mx.distributed.send(h, rank + 1, group=group, stream=generation_stream)
        mx.async_eval(h)
    channel = ControlChannel(group)
    first = Control([Submit("long", list(range(args.prompt_tokens)), SamplingParams(max_tokens=3))])
    second = Control(cancels=["long"])
    taken = []
    if rank == 0:
        time.sleep(args.idle_s)
        channel.post(first)
    else:
        channel.post(None)
    step(100.0)
    cpu, wall = time.process_time(), time.monotonic()
    taken.append(channel.take())
    cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    channel.post(second if rank == 0 else None)
    step(200.0)
    taken.append(channel.take())
    step(300.0)
    sync_ranks(group)
    import numpy as np

    # What each step handed this rank: value + (rank - 1), in every element.
    handed = [sorted({float(x) for x in np.array(h).ravel()}) for h in received]
    print(json.dumps({
        "rank": rank,
        "take_cpu_s": cpu,
        "take_wall_s": wall,
        "prompt_ok": taken[0].submits[0].prompt == list(range(args.prompt_tokens)),
        "second": [taken[1].cancels, taken[1].submits],
        "handed": handed,
    }), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
