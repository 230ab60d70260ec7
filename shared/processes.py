"""Which process a pid is, and the node's supervisor as its processes know it.

A pid alone is not a process: the OS reuses pids. A process is named by its pid and its create time, and a
process that was younger than the one asking cannot be the parent it knew (the parent died and its pid went to
someone else). The node's supervisor passes its pid to every service and runner (their specs' `supervisor_pid`); they stop
when it is gone, so nothing of a node outlives it, not even after a kill -9 of the `exo` process.

A create time is wall-clock: psutil adds the boot time (/proc/stat `btime`, whole seconds, which Linux derives
from the wall clock at each read), so a step of the clock, or its slewing against the boot clock across a second,
moves every process's create time at once. An Anchor, which a process
takes and checks itself, compares the start in clock ticks since boot instead (/proc/PID/stat), which no clock
step moves: CI saw every service of a node take a clock step for its supervisor's death and restart.
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


def start_since_boot(pid: int) -> tuple[int, bool] | None:
    """Linux: (the process's start in clock ticks since boot, whether it is a zombie), from /proc/PID/stat; None
    where there is no such file (gone, or not Linux)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        fields = stat[stat.rindex(b")") + 2 :].split()  # after the command name, which may hold spaces
        return int(fields[19]), fields[0] == b"Z"  # starttime is field 22 of the file, state field 3
    except (OSError, ValueError, IndexError):
        return None


class Anchor:
    """A process identified by pid and start (a reused pid is not the same process): by its start in ticks since
    boot where the process that holds the anchor took it itself on Linux (`of`), else by its create time."""

    def __init__(self, pid: int, created: float | None, ticks: int | None = None) -> None:
        self.pid = pid
        self.created = created
        self.ticks = ticks

    @classmethod
    def of(cls, pid: int) -> Anchor:
        """The process `pid`, if it is older than us: a younger one reused the pid of one that is gone."""
        started, own_start = start_since_boot(pid), start_since_boot(os.getpid())
        if own_start is not None:  # Linux
            older = started is not None and started[0] <= own_start[0]
            return cls(pid, None, started[0] if started is not None and older else None)
        created, own = create_time(pid), create_time(os.getpid())
        return cls(pid, created if created is not None and own is not None and created <= own else None)

    @classmethod
    def known(cls, pid: int, created: float) -> Anchor:
        """The process `pid` whose create time is `created` (read from a record), held from now on by its start
        since boot where that is had (Linux): a step of the clock later does not make it look gone."""
        by_time = cls(pid, created)
        started = start_since_boot(pid) if by_time.alive() else None
        return cls(pid, None, started[0]) if started is not None else by_time

    def alive(self) -> bool:
        if self.ticks is not None:
            now = start_since_boot(self.pid)
            return now is not None and now[0] == self.ticks and not now[1]
        return self.created is not None and process_alive(self.pid, self.created)


def supervisor_anchor(pid: int | None) -> Anchor | None:
    """The node's supervisor (its pid from the process's spec), for a process that the node started; None for
    one started otherwise (by hand, or by launchd, which is then the supervisor)."""
    return Anchor.of(pid) if pid else None
