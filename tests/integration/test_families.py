"""Every family of the seed's models (tests/tiny_families.py: llama, qwen2, mixtral, deepseek_v3, qwen3_moe and
a 4-bit qwen3_moe), split both ways by real rank processes over MLX's ring on loopback: a 2- and a 3-stage
pipeline and tensor parallel on 2 ranks give the greedy and the seeded-sampled tokens of one process.

Each topology starts all its ranks at once, and each rank runs every model in turn
(tests/integration/family_ranks.py), so a topology costs one process start per rank.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.family_ranks import run_topology

MAX_TOKENS = 64


def first_difference(a: list[int], b: list[int]) -> int | None:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None if len(a) == len(b) else min(len(a), len(b)))


@pytest.fixture(scope="module")
def family_models(tmp_path_factory) -> dict[str, Path]:
    from tests.tiny_families import build_all

    return build_all(tmp_path_factory.mktemp("families"))


@pytest.fixture(scope="module")
def one_process(family_models, tmp_path_factory) -> dict:
    (result,) = run_topology(family_models, "single", 1, tmp_path_factory.mktemp("single"), MAX_TOKENS)
    for name, r in result["models"].items():
        assert len(r["greedy"]) == MAX_TOKENS and len(r["sampled"]) == MAX_TOKENS, name
    return result["models"]


# Tensor parallel adds the ranks' partial sums in another order than one matmul: the logits differ in the last
# bits. Greedy picks keep (the models' logits are peaked); a draw at temperature 1 lands on the other side of a
# boundary now and then (measured: llama after 21 tokens). The ranks still agree with each other, always.
SAMPLED_PREFIX_UNDER_TENSOR = 8


@pytest.mark.slow
@pytest.mark.parametrize("strategy, world", [("pipeline", 2), ("pipeline", 3), ("tensor", 2)], ids=["pipeline-2", "pipeline-3", "tensor-2"])
def test_every_family_split_gives_one_process_tokens(family_models, one_process, strategy, world, tmp_path):
    ranks = run_topology(family_models, strategy, world, tmp_path, MAX_TOKENS)
    wrong = []
    for name in family_models:
        expected = one_process[name]
        for r in ranks:
            got = r["models"][name]
            assert "skipped" not in got, f"{name} {strategy}x{world}: {got.get('skipped')}"
            assert got["greedy"] == ranks[0]["models"][name]["greedy"], f"{name}: ranks disagree"
            assert got["sampled"] == ranks[0]["models"][name]["sampled"], f"{name}: ranks disagree"
        # Each rank holds its part of the layers only. Pipeline: every layer on one rank (the families' layers
        # differ in size: DeepSeek's first is dense). Tensor: about half of every layer (norms, routers and
        # DeepSeek's latent projections stay whole).
        share = [r["models"][name]["layer_bytes"] / expected["layer_bytes"] for r in ranks]
        if strategy == "pipeline":
            assert sum(share) == pytest.approx(1.0, abs=0.01) and max(share) < 0.9, f"{name}: layer shares {share}"
        else:
            assert all(0.5 <= s <= 0.75 for s in share), f"{name}: layer shares {share}"
        got = ranks[0]["models"][name]
        for request in ("greedy", "sampled"):
            where = first_difference(got[request], expected[request])
            print(f"{name} {strategy}x{world} {request}: "
                  f"{'identical' if where is None else f'differs from token {where}'} over {len(expected[request])}")
            tolerated = strategy == "tensor" and request == "sampled" and (where or 0) >= SAMPLED_PREFIX_UNDER_TENSOR
            if where is not None and not tolerated:
                wrong.append(f"{name} {request} differs from token {where}")
    assert not wrong, f"{strategy}x{world}: {wrong}"
