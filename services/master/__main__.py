"""`python -m services.master` (or `exo service master`): run this node's master alone."""

from __future__ import annotations

import argparse

from shared.config import add_common_args, common_from_args, service_spec
from shared.identity import load_or_create_node_id
from shared.logging import setup_logging
from shared.process_lifetime import run_until_signalled
from shared.specs import MasterSpec

from services.master.service import Master


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="exo service master", description=__doc__)
    add_common_args(parser)
    spec = service_spec(argv, MasterSpec, parser, lambda ns, found: {"common": common_from_args(ns, found)})
    config = spec.common
    setup_logging("master", config.log_dir, config.log_level, config.console_logs)
    node_id = load_or_create_node_id(config.state_dir)
    run_until_signalled(Master(config, node_id).run, supervisor_pid=config.supervisor_pid)


if __name__ == "__main__":
    main()
