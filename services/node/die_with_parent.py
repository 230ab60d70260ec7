"""`python -m services.node.die_with_parent PROGRAM ARGS...`: run PROGRAM so that it ends with this process's
parent, the node's supervisor, even when that is killed with -9 and cannot stop it.

For the node's one child that is not ours, nats-server (the services watch the supervisor themselves:
shared/process_lifetime.py). Linux: the kernel sends SIGTERM to the program when its parent dies (PR_SET_PDEATHSIG,
kept across exec), and nats-server stops cleanly on SIGTERM. Elsewhere (macOS) the program just runs: a bus
left behind there is stopped by the node's next start on the same state dir (services/node/previous_run.py).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def argv(program: list[str]) -> list[str]:
    """The command line that runs `program` this way."""
    return [sys.executable, "-m", "services.node.die_with_parent", *program]


def main(program: list[str]) -> None:
    if not program:
        raise SystemExit("usage: python -m services.node.die_with_parent PROGRAM [ARGS...]")
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            print(f"die_with_parent: prctl failed (errno {ctypes.get_errno()}); running unwatched", file=sys.stderr)
        elif os.getppid() != parent:  # the parent died before the kernel watched it: nobody to serve
            raise SystemExit(1)
    os.execvp(program[0], program)


if __name__ == "__main__":
    main(sys.argv[1:])
