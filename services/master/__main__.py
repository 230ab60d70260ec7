"""`python -m services.master` (or `exo service master`): run this node's master alone."""

from __future__ import annotations

import argparse

from shared.config import add_common_args, common_from_args
from shared.identity import load_or_create_node_id
from shared.logging import setup_logging
from shared.process_lifetime import run_until_signalled

from services.master.service import Master


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="exo service master", description=__doc__)
    add_common_args(parser)
    config = common_from_args(parser.parse_args(argv))
    setup_logging("master", config.log_dir, config.log_level, config.console_logs)
    node_id = load_or_create_node_id(config.state_dir)
    run_until_signalled(Master(config, node_id).run)


if __name__ == "__main__":
    main()
