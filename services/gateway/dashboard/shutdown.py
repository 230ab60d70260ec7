"""Ending the live feeds when the gateway is told to stop.

uvicorn's graceful shutdown waits for every open response to finish before the app's shutdown runs, and a feed
never finishes by itself: one open dashboard held a node's stop for the full exit grace (9.4 s instead of 1.5 s).
So the termination signals uvicorn handles also set an event the feeds watch; uvicorn's own handler still runs.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from types import FrameType


def end_feeds_on_termination(stopping: asyncio.Event) -> None:
    """Chain onto the SIGTERM and SIGINT handlers in place (uvicorn's, while it serves); where none is a Python
    function (not under uvicorn, or not in the main thread) there is nothing to chain onto, and nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        return
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(sig)
        if not callable(previous):
            continue

        def handler(signum: int, frame: FrameType | None, previous=previous) -> None:  # noqa: ANN001
            loop.call_soon_threadsafe(stopping.set)
            previous(signum, frame)

        signal.signal(sig, handler)
