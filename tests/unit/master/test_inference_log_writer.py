"""The writer's turn-taking: a lake call runs in a thread that cannot be stopped, so a cancelled caller keeps
the turn until its call has ended (else the next call would use the one DuckDB instance at the same time)."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

from services.master.inference_log import InferenceLog


async def test_a_cancelled_call_keeps_the_turn_until_its_thread_ends(tmp_path: Path) -> None:
    writer = InferenceLog(None, "node-a", tmp_path)  # type: ignore[arg-type] - no bus needed for turns
    inside = threading.Event()
    overlaps = []
    busy = threading.Lock()

    def slow_call() -> None:
        if not busy.acquire(blocking=False):
            overlaps.append("slow")
            return
        inside.set()
        time.sleep(0.5)
        busy.release()

    def quick_call() -> str:
        if not busy.acquire(blocking=False):
            overlaps.append("quick")
            return "overlapped"
        busy.release()
        return "alone"

    first = asyncio.create_task(writer._in_turn(slow_call))
    await asyncio.to_thread(inside.wait, 5)
    first.cancel()
    second = await writer._in_turn(quick_call)
    assert first.cancelled()
    assert (second, overlaps) == ("alone", [])
