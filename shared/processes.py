"""Which process a pid is, and the node's supervisor as its processes know it.

A pid alone is not a process: the OS reuses pids. A process is named by its pid and its create time, and a
process that was younger than the one asking cannot be the parent it knew (the parent died and its pid went to
someone else). The node's supervisor passes its pid to every service and runner (their specs' `supervisor_pid`); they stop
when it is gone, so nothing of a node outlives it, not even after a kill -9 of the `exo` process.
"""

from __future__ import annotations

import os

import psutil


def create_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def process_alive(pid: int, created: float) -> bool:
    """The process with this pid exists, is the same one (create time), and is not a zombie."""
    try:
        proc = psutil.Process(pid)
        return abs(proc.create_time() - created) < 0.01 and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class Anchor:
    """A process identified by pid and create time (a reused pid is not the same process)."""

    def __init__(self, pid: int, created: float | None) -> None:
        self.pid = pid
        self.created = created

    @classmethod
    def of(cls, pid: int) -> Anchor:
        """The process `pid`, if it is older than us: a younger one reused the pid of one that is gone."""
        created, own = create_time(pid), create_time(os.getpid())
        return cls(pid, created if created is not None and own is not None and created <= own else None)

    def alive(self) -> bool:
        return self.created is not None and process_alive(self.pid, self.created)


def supervisor_anchor(pid: int | None) -> Anchor | None:
    """The node's supervisor (its pid from the process's spec), for a process that the node started; None for
    one started otherwise (by hand, or by launchd, which is then the supervisor)."""
    return Anchor.of(pid) if pid else None
