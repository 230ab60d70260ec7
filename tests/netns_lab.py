"""Several "hosts" on one machine: network namespaces joined by veth pairs to a bridge (in a namespace of its
own), plus one veth from the tests' own namespace so the tests can reach every host's API.

Needs root and iproute2; `skip_reason()` says why a test cannot run. Everything is removed by `down()`
(deleting a namespace deletes its veth ends), also after a failed test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field

SUBNET = "10.231.77"


def skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 (the ip command) is not installed"
    probe = f"exoprobe{os.getpid() % 100000}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")


@dataclass
class Lab:
    hosts: int
    tag: str = field(default_factory=lambda: f"{os.getpid() % 10000}")
    made: list[str] = field(default_factory=list)

    @property
    def bridge_ns(self) -> str:
        return f"exo{self.tag}br"

    def ns(self, i: int) -> str:
        return f"exo{self.tag}h{i}"

    def address(self, i: int) -> str:
        return f"{SUBNET}.{i + 1}"

    @property
    def tests_address(self) -> str:
        return f"{SUBNET}.254"

    def up(self) -> Lab:
        ip("netns", "add", self.bridge_ns)
        self.made.append(self.bridge_ns)
        ip("-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
        ip("-n", self.bridge_ns, "link", "set", "br0", "up")
        for i in range(self.hosts):
            ip("netns", "add", self.ns(i))
            self.made.append(self.ns(i))
            self._plug(f"x{self.tag}h{i}", f"x{self.tag}b{i}", self.ns(i), self.address(i))
        self._plug(f"x{self.tag}t", f"x{self.tag}bt", None, self.tests_address)
        return self

    def _plug(self, host_end: str, bridge_end: str, ns: str | None, address: str) -> None:
        ip("link", "add", host_end, "type", "veth", "peer", "name", bridge_end)
        ip("link", "set", bridge_end, "netns", self.bridge_ns)
        ip("-n", self.bridge_ns, "link", "set", bridge_end, "master", "br0", "up")
        scope = ["-n", ns] if ns else []
        if ns:
            ip("link", "set", host_end, "netns", ns)
            ip(*scope, "link", "set", "lo", "up")
        ip(*scope, "addr", "add", f"{address}/24", "dev", host_end)
        ip(*scope, "link", "set", host_end, "up")
        if ns:  # multicast beacons need a route out of the namespace
            ip(*scope, "route", "add", "224.0.0.0/4", "dev", host_end)

    def cut(self, i: int) -> None:
        """Host i loses its link (the cable is pulled at the switch)."""
        ip("-n", self.bridge_ns, "link", "set", f"x{self.tag}b{i}", "down")

    def heal(self, i: int) -> None:
        ip("-n", self.bridge_ns, "link", "set", f"x{self.tag}b{i}", "up")

    def run_in(self, i: int) -> list[str]:
        """Prefix for a command run on host i."""
        return ["ip", "netns", "exec", self.ns(i)]

    def down(self) -> None:
        for name in reversed(self.made):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        subprocess.run(["ip", "link", "del", f"x{self.tag}t"], capture_output=True)
        self.made.clear()
