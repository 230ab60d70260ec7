"""One rank of a two-rank MLX ring group that exchanges controls (services/worker/runner/control.py), for
tests/integration/test_ring_ranks.py.

    MLX_RANK=r MLX_HOSTFILE=hosts.json python tests/integration/ring_ranks.py --idle-s 3 --prompt-tokens 4000

Rank 0 waits --idle-s seconds, then posts a control holding one submit with a --prompt-tokens long prompt,
then a cancel. The other ranks post nothing and take what rank 0 posted: while rank 0 waits they wait in
the control's all_sum. Prints one JSON line: rank, CPU seconds spent in the first take, the controls taken.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from services.worker.runner.control import Control, ControlChannel, Submit  # noqa: E402
from services.worker.runner.sharding import init_group, sync_ranks  # noqa: E402
from shared.generation import SamplingParams  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--idle-s", type=float, default=3.0)
    parser.add_argument("--prompt-tokens", type=int, default=4000)
    args = parser.parse_args()
    group = init_group(2)
    rank = group.rank()
    channel = ControlChannel(group)
    first = Control([Submit("long", list(range(args.prompt_tokens)), SamplingParams(max_tokens=3))])
    second = Control(cancels=["long"])
    taken = []
    if rank == 0:
        time.sleep(args.idle_s)
        channel.post(first)
    else:
        channel.post(None)
    cpu, wall = time.process_time(), time.monotonic()
    taken.append(channel.take())
    cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    channel.post(second if rank == 0 else None)
    taken.append(channel.take())
    sync_ranks(group)
    print(json.dumps({
        "rank": rank,
        "take_cpu_s": cpu,
        "take_wall_s": wall,
        "prompt_ok": taken[0].submits[0].prompt == list(range(args.prompt_tokens)),
        "second": [taken[1].cancels, taken[1].submits],
    }), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
