"""Every `EXO_*` variable a process of the node reads, in one table: the name, the flag whose default it gives
(the spec field it ends in), and what it is for. `shared.config.environment` is the one reader.

A service that the node's supervisor starts gets its whole spec on its command line, and a runner gets one from
its worker: these variables matter only to `exo` itself and to a service started alone (launchd, a shell).
The runner's settings (`shared.specs.RunnerSettings`) add their own rows: `EXO_<FIELD>` for each field.
"""

from __future__ import annotations

import msgspec

SECRET = "EXO_CLUSTER_SECRET"  # taken out of the environment once read: children must not inherit it
API_KEY = "EXO_API_KEY"  # likewise; handed to the gateway alone
API_KEY_FILE = "EXO_API_KEY_FILE"
CONSOLE_LOGS = "EXO_CONSOLE_LOGS"


class EnvName(msgspec.Struct, frozen=True):
    name: str
    dest: str  # the argparse dest (= spec field) whose default it gives
    what: str
    secret: bool = False  # popped from the environment once read


TABLE: tuple[EnvName, ...] = (
    EnvName("EXO_NATS_URL", "nats_url", "the NATS server every service connects to"),
    EnvName("EXO_STATE_DIR", "state_dir", "the node's state dir (default ~/.exo)"),
    EnvName("EXO_LOG_LEVEL", "log_level", "debug, info, warning, error"),
    EnvName(CONSOLE_LOGS, "console_logs", "0: JSON log files only, no console lines"),
    EnvName(SECRET, "cluster_secret", "the cluster secret (a service started alone)", secret=True),
    EnvName("EXO_PORT", "port", "the gateway's API port"),
    EnvName("EXO_HOST", "host", "the gateway's bind address"),
    EnvName("EXO_MAX_BODY_BYTES", "max_body_bytes", "the gateway's largest request body"),
    EnvName(API_KEY, "api_key", "the key every API route but /health requires", secret=True),
    EnvName(API_KEY_FILE, "api_key_file", "the file holding that key"),
    EnvName("EXO_MEMORY", "memory", "the memory budget placement uses on this node, e.g. 1GB"),
    EnvName("EXO_ROLES", "roles", "services of this node placement cares about (discovery alone)"),
    EnvName("EXO_PEERS", "peers", "host[:port],... beaconed to directly"),
    EnvName("EXO_DISCOVERY_PORT", "discovery_port", "UDP port of the beacons"),
    EnvName("EXO_DISCOVERY_BIND", "discovery_bind", "address the beacon socket binds"),
    EnvName("EXO_ROUTE_PORT", "route_port", "this node's NATS cluster port, advertised in beacons"),
    EnvName("EXO_HOSTNAME", "hostname", "the name this machine goes by in facts and beacons"),
    EnvName("EXO_WEIGHT_FORMAT", "weight_format", "q4 or f32: the runners' weight layout"),
    EnvName("EXO_BLAS", "blas", "auto or reference: the runners' BLAS"),
)

# Read by the CPU kernel's native code itself, as MLX reads MLX_*: no spec field.
NATIVE: tuple[EnvName, ...] = (
    EnvName("EXO_KERNEL_SPIN_US", "", "how long the CPU kernel's pool threads spin before they sleep"),
)
