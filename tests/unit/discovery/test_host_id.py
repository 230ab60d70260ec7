"""The host id discovery publishes (services/discovery/local_facts.py): equal exactly for nodes that share one
network stack, i.e. that reach each other on loopback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from services.discovery.local_facts import compose_host_id, read_facts

MACHINE, BOOT, NETNS = "3d1219aa", "2be8-17", "net:4026531840"


def test_same_machine_boot_and_namespace_give_one_id():
    assert compose_host_id(MACHINE, BOOT, NETNS) == compose_host_id(MACHINE, BOOT, NETNS) != ""


def test_network_namespaces_on_one_machine_differ():
    """Namespaces share /etc/machine-id and the boot id: the namespace's inode tells them apart."""
    assert compose_host_id(MACHINE, BOOT, "net:4026532001") != compose_host_id(MACHINE, BOOT, "net:4026532002")


def test_clones_that_copied_their_machine_id_differ_by_boot():
    """Cloned images often keep /etc/machine-id, and every initial namespace has the same inode."""
    assert compose_host_id(MACHINE, "boot-1", NETNS) != compose_host_id(MACHINE, "boot-2", NETNS)


def test_without_any_id_the_routable_addresses_stand_in():
    a = compose_host_id("", "", "", ("127.0.0.1", "fe80::1", "10.0.0.1/24"))
    assert a == compose_host_id("", "", "", ("10.0.0.1",)) != compose_host_id("", "", "", ("10.0.0.2",))
    assert compose_host_id("", "", "", ("127.0.0.1", "fe80::1")) == ""


def test_two_reads_in_one_namespace_agree():
    assert read_facts("a", ("worker",), None).host_id == read_facts("b", ("worker",), None).host_id != ""


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="a new network namespace needs root")
def test_a_process_in_another_network_namespace_gets_another_id():
    code = "from services.discovery.local_facts import read_facts; print(read_facts('x', (), None).host_id)"
    out = subprocess.run(["unshare", "--net", sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)  # fmt: skip
    other = out.stdout.strip()
    assert other and other != read_facts("x", (), None).host_id
