"""A ring port held by another socket is named before MLX's bare "[ring] Couldn't bind socket (error: 98)"."""

import json
import socket

import pytest

from services.worker.runner.ring.ring_ports import RingPortTaken, check_ring_ports


def _hostfile(tmp_path, ports):
    path = tmp_path / "hostfile.json"
    path.write_text(json.dumps([[f"127.0.0.1:{p}"] for p in ports]))
    return str(path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_taken_port_is_named_with_what_to_do(tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        hostfile = _hostfile(tmp_path, [_free_port(), taken])
        with pytest.raises(RingPortTaken, match=f"127.0.0.1:{taken} of rank 1 is held by another socket"):
            check_ring_ports(1, hostfile)
        check_ring_ports(0, hostfile)  # rank 0's own port is free: no error


def test_free_ports_pass(tmp_path):
    check_ring_ports(0, _hostfile(tmp_path, [_free_port(), _free_port()]))
