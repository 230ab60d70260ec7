"""Which files of a sharded repo a pipeline node fetches, and the disk check (services/worker/models/hub_files.py)."""

from __future__ import annotations

import json

from services.worker.models.hub_blobs import Listing, RepoFile
from services.worker.models.hub_files import (
    METADATA_PATTERNS,
    disk_problem,
    eta_seconds,
    files_for_layers,
    holds_every_weight_file,
    tensor_layer,
)

WEIGHT_MAP = {
    "model.embed_tokens.weight": "model-00001-of-00003.safetensors",
    "model.layers.0.self_attn.q_proj.weight": "model-00001-of-00003.safetensors",
    "model.layers.1.self_attn.q_proj.weight": "model-00001-of-00003.safetensors",
    "model.layers.1.mlp.down_proj.weight": "model-00002-of-00003.safetensors",  # a layer across two files
    "model.layers.2.mlp.down_proj.weight": "model-00002-of-00003.safetensors",
    "model.layers.3.mlp.down_proj.weight": "model-00003-of-00003.safetensors",
    "model.norm.weight": "model-00003-of-00003.safetensors",
    "lm_head.weight": "model-00003-of-00003.safetensors",
}


def test_layer_numbers_are_read_from_tensor_names():
    assert tensor_layer("model.layers.12.mlp.up_proj.scales") == 12
    assert tensor_layer("language_model.model.layers.3.self_attn.k_proj.weight") == 3
    assert tensor_layer("model.embed_tokens.weight") is None


def test_each_stage_fetches_the_files_of_its_layers_and_of_the_tensors_outside_them():
    # every stage needs file 1 (embedding) and file 3 (norm, head): only file 2 can be skipped
    assert files_for_layers(WEIGHT_MAP, 0, 1) == ["model-00001-of-00003.safetensors", "model-00003-of-00003.safetensors"]
    assert files_for_layers(WEIGHT_MAP, 1, 2) == [
        "model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors"]
    assert files_for_layers(WEIGHT_MAP, 3, 4) == ["model-00001-of-00003.safetensors", "model-00003-of-00003.safetensors"]


def test_a_listing_yields_the_metadata_and_only_the_chosen_weights():
    names = ["README.md", "config.json", "tokenizer.json", "chat_template.jinja", "sub/vocab.txt", "pytorch_model.bin",
             "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]  # fmt: skip
    listed = Listing("c0ffee", {n: RepoFile(n, f"etag-{n}", 1) for n in names})
    assert listed.matching(METADATA_PATTERNS) == ["chat_template.jinja", "config.json", "sub/vocab.txt", "tokenizer.json"]
    assert listed.matching(["model-00002-of-00002.safetensors"]) == ["model-00002-of-00002.safetensors"]
    assert listed.matching(["model*.safetensors"]) == names[-2:]
    assert listed.matching(["absent.safetensors"]) == []


def test_not_enough_disk_says_how_much_is_needed_and_where():
    assert disk_problem("org/m", 10, 10, "/cache") is None
    problem = disk_problem("org/m", 5 * 10**9, 10**9, "/cache")
    assert problem is not None and "5.00 GB to download, 1.00 GB free in /cache" in problem


def test_eta():
    assert eta_seconds(50, 150, 10.0) == 10.0
    assert eta_seconds(150, 150, 10.0) == 0.0
    assert eta_seconds(0, 150, 0.0) is None


def test_a_partial_snapshot_is_told_from_a_whole_one(tmp_path):
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": WEIGHT_MAP}))
    for n in (1, 3):
        (tmp_path / f"model-0000{n}-of-00003.safetensors").write_bytes(b"x")
    assert not holds_every_weight_file(tmp_path)
    (tmp_path / "model-00002-of-00003.safetensors").write_bytes(b"x")
    assert holds_every_weight_file(tmp_path)
