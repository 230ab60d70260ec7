"""`python -m services.discovery` (or `exo service discovery`): run this node's discovery alone."""

from __future__ import annotations

import argparse

from shared.config import add_common_args, common_from_args, parse_bytes, service_spec
from shared.identity import load_or_create_node_id
from shared.logging import setup_logging
from shared.process_lifetime import run_until_signalled
from shared.specs import DiscoverySpec

from services.discovery.service import Discovery
from services.discovery.settings import add_discovery_args, settings_from_spec, spec_values


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="exo service discovery", description=__doc__)
    add_common_args(p)
    p.add_argument("--memory", default=None,
                   help="memory budget placement may use on this node, e.g. 1GB (env EXO_MEMORY; default: measured free memory)")  # fmt: skip
    p.add_argument("--roles", default="worker",
                   help="comma-separated services of this node that placement cares about (env EXO_ROLES)")  # fmt: skip
    add_discovery_args(p)
    return p


def discovery_spec(argv: list[str] | None) -> DiscoverySpec:
    p = parser()

    def from_flags(ns: argparse.Namespace, found: dict[str, str]) -> dict:
        try:
            beacons = spec_values(ns)
            budget = parse_bytes(ns.memory) if ns.memory else None
        except ValueError as exc:
            p.error(str(exc))
        roles = tuple(r for r in ns.roles.split(",") if r)
        return {"common": common_from_args(ns, found), "roles": roles, "memory": budget, **beacons}

    return service_spec(argv, DiscoverySpec, p, from_flags)


def main(argv: list[str] | None = None) -> None:
    spec = discovery_spec(argv)
    config = spec.common
    setup_logging("discovery", config.log_dir, config.log_level, config.console_logs)
    node_id = load_or_create_node_id(config.state_dir)
    discovery = Discovery(config, node_id, spec.roles, spec.memory, settings_from_spec(spec))
    run_until_signalled(discovery.run, supervisor_pid=config.supervisor_pid)


if __name__ == "__main__":
    main()
