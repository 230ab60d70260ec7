"""`python -m services.worker` (or `exo service worker`): run this node's worker alone."""

from __future__ import annotations

import argparse
import os

from shared.config import add_common_args, common_from_args
from shared.identity import load_or_create_node_id
from shared.logging import setup_logging
from shared.process_lifetime import run_until_signalled

from services.worker.service import Worker


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="exo service worker", description=__doc__)
    add_common_args(parser)
    parser.add_argument(
        "--weight-format",
        choices=["q4", "f32"],
        default=os.environ.get("EXO_WEIGHT_FORMAT") or None,
        help="weight layout for runners (env EXO_WEIGHT_FORMAT; default: the fastest that fits this device)",
    )
    parser.add_argument(
        "--blas",
        choices=["auto", "reference"],
        default=os.environ.get("EXO_BLAS", "auto"),
        help="auto: the fastest BLAS installed; reference: MLX's own, batch-invariant (env EXO_BLAS)",
    )
    ns = parser.parse_args(argv)
    config = common_from_args(ns)
    setup_logging("worker", config.log_dir, config.log_level, config.console_logs)
    node_id = load_or_create_node_id(config.state_dir)
    run_until_signalled(Worker(config, node_id, ns.weight_format, ns.blas).run)


if __name__ == "__main__":
    main()
