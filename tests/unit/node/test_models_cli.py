"""`exo models` output (services/node/models_cli.py): the cache per node, downloads with speed and ETA."""

from __future__ import annotations

from services.node.models_cli import render
from shared.downloads import CachedModel, DownloadProgress, NodeModels
from shared.ids import NodeId


def test_the_table_shows_each_nodes_models_and_downloads():
    nodes = [
        NodeModels(NodeId("node-a"), "/hf/hub", 50 * 10**9,
                   cached=(CachedModel("org/tiny", "0123456789abcdef", 12_500_000, 7, "/hf/hub/x", complete=False),),
                   downloads=(DownloadProgress("org/big", "org/big", "downloading", 10_000_000, 40_000_000, 2_000_000.0,
                                               15.0),)),  # fmt: skip
        NodeModels(NodeId("node-b"), "/hf/hub", 10**9),
    ]
    text = render(nodes)
    lines = text.splitlines()
    assert lines[0].split() == ["NODE", "MODEL", "REVISION", "SIZE", "FILES", "COMPLETE"]
    assert lines[1].split() == ["node-a", "org/tiny", "0123456789ab", "12.5", "MB", "7", "partial"]
    assert "node-a: 50.0 GB free in /hf/hub" in text and "node-b: 1.0 GB free" in text
    assert "downloading org/big: 10.0/40.0 MB, 2.00 MB/s, ETA 15 s" in text


def test_an_empty_cluster_says_so():
    assert render([]).startswith("no model cached")
