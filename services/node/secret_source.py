"""Where `exo` takes the cluster secret from, and `exo join`.

In order: --cluster-secret-file (refused when others can read it), --cluster-secret (works, but every user
of the machine can read a command line: warned, then scrubbed from ours), EXO_CLUSTER_SECRET (removed from
our environment so no child inherits it), else the one stored in the state dir (kept there by `exo join` or
by an earlier start), else a new one. The node then keeps it in `<state-dir>/cluster.secret` (0600), which is
where the processes it starts read it.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from collections.abc import Callable
from pathlib import Path

from shared.cluster_secret import (
    SECRET_ENV,
    BadSecret,
    normalise,
    read_secret_file,
    secret_path,
    stored,
    write_private,
)

from services.node.scrub import scrub_own_process

ARGV_WARNING = (
    "exo: warning: --cluster-secret puts the secret on the command line, where every user of this machine "
    "can read it; use `exo join` once, --cluster-secret-file PATH (mode 600) or EXO_CLUSTER_SECRET instead"
)


def given_secret(args: argparse.Namespace, env_value: str | None = None) -> str | None:
    """The secret the operator gave this run (None: use the stored one); `env_value`: EXO_CLUSTER_SECRET, which
    shared.config.environment took out of the environment (the services we start must not inherit it).
    Raises BadSecret with the reason."""
    if env_value:
        scrub_own_process(env_value)
    if args.cluster_secret_file and args.cluster_secret:
        raise BadSecret("give --cluster-secret-file or --cluster-secret, not both")
    if args.cluster_secret_file:
        return read_secret_file(Path(args.cluster_secret_file).expanduser())
    if args.cluster_secret:
        print(ARGV_WARNING, file=sys.stderr, flush=True)
        if not scrub_own_process(args.cluster_secret):
            print("exo: warning: this platform gives no way to hide it from the process list", file=sys.stderr)
        return normalise(args.cluster_secret)
    return normalise(env_value) if env_value else None


def join(argv: list[str], state_dir_of: Callable[[str | None], Path]) -> int:
    """`exo join`: read the secret once (a prompt that does not echo on a terminal, else one line of stdin)
    and keep it in the state dir, mode 0600, so that every later `exo` of this node uses it."""
    parser = argparse.ArgumentParser(prog="exo join", description="store the cluster secret for this node")
    parser.add_argument("--state-dir", type=Path, default=None)
    parser.add_argument("--node-name", default=None)
    parser.add_argument("--force", action="store_true", help="replace a different secret this node already has")
    ns = parser.parse_args(argv)
    state_dir = (ns.state_dir or state_dir_of(ns.node_name)).expanduser()
    if sys.stdin.isatty():
        text = getpass.getpass("cluster secret (printed by the first node): ")
    else:
        text = sys.stdin.readline()
    try:
        secret = normalise(text)
    except BadSecret as exc:
        print(f"exo join: {exc}", file=sys.stderr)
        return 2
    current = stored(state_dir)
    if current is not None and current != secret and not ns.force:
        print(f"exo join: {secret_path(state_dir)} holds a different secret (this node is in another cluster); "
              "--force replaces it", file=sys.stderr)  # fmt: skip
        return 2
    state_dir.mkdir(parents=True, exist_ok=True)
    write_private(secret_path(state_dir), secret)
    print(f"exo join: secret stored in {secret_path(state_dir)} (mode 600); now run `exo`"
          + (f" --node-name {ns.node_name}" if ns.node_name else ""))  # fmt: skip
    return 0
