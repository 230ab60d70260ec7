"""`exo peers`: what it prints from a peers.json, and what it says when there is none or it is stale."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from services.node.peers_cli import human_bytes, main
from shared.peers import Peer, PeerTable, peers_path, write_table

GiB = 1024**3


def peer(node_id: str, latency_ms: float | None, seen_ago: float, now: float) -> Peer:
    return Peer(
        node_id=node_id, hostname=f"host-{node_id}", address="10.0.0.2", discovery_port=52416, route_port=6222,
        memory_total=64 * GiB, memory_available=int(40.5 * GiB), backends=("ring", "jaccl"),
        last_seen=now - seen_ago, latency_ms=latency_ms,
    )  # fmt: skip


def write(state_dir: Path, written_ago: float, *peers: Peer) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    write_table(state_dir, PeerTable("node-me", time.time() - written_ago, peers))


def test_prints_one_row_per_peer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    now = time.time()
    write(tmp_path, 0.5, peer("node-b", 0.4, 1.2, now), peer("node-c", None, 0.2, now))
    assert main(["--state-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    header, columns, row_b, row_c = out.splitlines()
    assert "node-me" in header and "stale" not in out
    assert columns.split()[:3] == ["NODE", "HOSTNAME", "ADDRESS"]
    assert row_b.split()[:4] == ["node-b", "host-node-b", "10.0.0.2:52416", "6222"]
    assert "40.5 GiB / 64.0 GiB" in row_b and "ring,jaccl" in row_b and "0.4 ms" in row_b and "1.2 s ago" in row_b
    assert row_c.split()[0] == "node-c" and " - " in row_c  # no latency measured yet


def test_says_when_the_table_is_stale(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path, 60.0)
    assert main(["--state-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "stale" in out and "no peers heard" in out


def test_says_when_there_is_no_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--state-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "missing" in err and "cluster secret" in err.lower().replace("-", " ")


def test_json_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    now = time.time()
    write(tmp_path, 20.0, peer("node-b", 1.5, 1.0, now))
    assert main(["--state-dir", str(tmp_path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["stale"] is True and data["node_id"] == "node-me"
    assert [(p["node_id"], p["latency_ms"]) for p in data["peers"]] == [("node-b", 1.5)]


def test_json_when_there_is_no_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--state-dir", str(tmp_path), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["path"] == str(peers_path(tmp_path))


def test_node_name_picks_the_named_state_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EXO_STATE_DIR", str(tmp_path))
    write(tmp_path / "nodes" / "second", 0.0, peer("node-b", 0.4, 0.0, time.time()))
    assert main(["--node-name", "second"]) == 0
    assert "node-b" in capsys.readouterr().out


@pytest.mark.parametrize(("n", "text"), [(512, "512 B"), (1536, "1.5 KiB"), (3 * GiB, "3.0 GiB")])
def test_human_bytes(n: int, text: str) -> None:
    assert human_bytes(n) == text
