"""`python -m services.discovery` (or `exo service discovery`): run this node's discovery alone."""

from __future__ import annotations

import argparse
import os

from shared.config import add_common_args, common_from_args, parse_bytes
from shared.identity import load_or_create_node_id
from shared.logging import setup_logging
from shared.process_lifetime import run_until_signalled

from services.discovery.service import Discovery
from services.discovery.settings import add_discovery_args, settings_from_args


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="exo service discovery", description=__doc__)
    add_common_args(parser)
    parser.add_argument(
        "--memory",
        default=os.environ.get("EXO_MEMORY"),
        help="memory budget placement may use on this node, e.g. 1GB (env EXO_MEMORY; default: measured free memory)",
    )
    parser.add_argument(
        "--roles",
        default=os.environ.get("EXO_ROLES", "worker"),
        help="comma-separated services of this node that placement cares about (env EXO_ROLES)",
    )
    add_discovery_args(parser)
    ns = parser.parse_args(argv)
    config = common_from_args(ns)
    setup_logging("discovery", config.log_dir, config.log_level, config.console_logs)
    try:
        settings = settings_from_args(ns)
    except ValueError as exc:
        parser.error(str(exc))
    budget = parse_bytes(ns.memory) if ns.memory else None
    roles = tuple(r for r in ns.roles.split(",") if r)
    node_id = load_or_create_node_id(config.state_dir)
    run_until_signalled(Discovery(config, node_id, roles, budget, settings).run)


if __name__ == "__main__":
    main()
