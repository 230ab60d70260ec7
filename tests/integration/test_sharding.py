"""Sharded generation with real rank processes: pipeline (2 and 3 stages) and tensor parallel (3 ranks)
over MLX's ring backend on loopback, against the same model in one process.

Each rank is `tests/integration/sharded_generate.py`, spawned directly with MLX_RANK and MLX_HOSTFILE
(written by services/worker/dataplane.py); no mlx.launch. Every rank prints one JSON line: tokens,
decode tok/s, peak RSS.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from shared.events import Instance, ShardAssignment
from tests.integration.rank_processes import run_rank_processes

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tests" / "integration" / "sharded_generate.py"
MAX_TOKENS = 48  # 128-token identity through the whole product: tests/integration/test_cluster.py
RUN_TIMEOUT_S = 900


@pytest.fixture(scope="session")
def f32_model(shared_models) -> Path:  # noqa: ANN001 - tests.shared_models.SharedModels
    return shared_models.path("f32")


@pytest.fixture(scope="session")
def tiny_untied_model(f32_model, tmp_path_factory) -> Path:
    """A random 4-layer llama with an untied head, SmolLM2's tokenizer."""
    import shutil

    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.models.llama import Model, ModelArgs

    out = tmp_path_factory.mktemp("models") / "tiny-untied"
    out.mkdir()
    config = {
        "model_type": "llama",
        "hidden_size": 64,
        "num_hidden_layers": 4,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5,
        "vocab_size": 49152,
        "tie_word_embeddings": False,
        "eos_token_id": 2,
    }
    mx.random.seed(0)
    model = Model(ModelArgs.from_dict(config))
    mx.save_safetensors(str(out / "model.safetensors"), dict(tree_flatten(model.parameters())))
    (out / "config.json").write_text(json.dumps(config))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(f32_model / name, out / name)
    return out


def run_ranks(
    model: Path,
    strategy: str,
    world: int,
    tmp: Path,
    layers: list[tuple[int, int]] | None = None,
    max_tokens: int = MAX_TOKENS,
    extra: tuple[str, ...] = (),
) -> list[dict]:
    """Start `world` rank processes, wait for all, return their JSON results in rank order."""
    args = [sys.executable, str(SCRIPT), "--model", str(model), "--strategy", strategy, "--world-size", str(world)]
    args += ["--max-tokens", str(max_tokens), *extra]
    if layers:
        args += ["--layers", ",".join(f"{a}:{b}" for a, b in layers)]
    instance = None
    if world > 1:
        shards = tuple(
            ShardAssignment(f"node-{r}", r, *(layers[r] if layers else (0, 30))) for r in range(world)
        )
        instance = Instance("test", "smollm2-135m", strategy if strategy != "single" else "pipeline", "ring", shards)
    return run_rank_processes(args, instance, tmp, RUN_TIMEOUT_S, f"{strategy}x{world}")


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def describe(label: str, results: list[dict]) -> None:
    for r in results:
        print(
            f"{label} rank {r['rank']}: decode {r['decode_tps']:.2f} tok/s, prefill {r['prefill_tps']:.1f} tok/s, "
            f"params {r['param_bytes'] / 1e6:.0f} MB, peak RSS {r['peak_rss'] / 1e6:.0f} MB"
        )


@pytest.fixture(scope="module")
def single(f32_model, tmp_path_factory) -> dict:
    (result,) = run_ranks(f32_model, "single", 1, tmp_path_factory.mktemp("single"))
    describe("single", [result])
    assert len(result["tokens"]) == MAX_TOKENS
    return result


@pytest.mark.slow
@pytest.mark.parametrize(
    "layers, logits_on",
    [
        ([(0, 15), (15, 30)], "every_rank"),
        ([(0, 10), (10, 20), (20, 30)], "last_rank"),
        ([(0, 10), (10, 20), (20, 30)], "vocab_split"),
    ],
    ids=["2-stage-logits-on-every-rank", "3-stage-logits-on-last-rank", "3-stage-vocab-split-head"],
)
def test_pipeline_is_token_identical_and_each_rank_holds_its_share(f32_model, single, layers, logits_on, tmp_path):
    world = len(layers)
    results = run_ranks(f32_model, "pipeline", world, tmp_path, layers, extra=("--logits-on", logits_on))
    describe(f"pipeline x{world} ({logits_on})", results)
    for r in results:  # every rank samples the same tokens, equal to one process's
        assert r["tokens"] == single["tokens"], f"rank {r['rank']} differs at {common_prefix(r['tokens'], single['tokens'])}"
    # Memory: a rank holds its layers plus the (tied) embedding/head, not the whole model.
    whole_params, whole_rss = single["param_bytes"], single["peak_rss"]
    embedding = 49152 * 576 * 4
    for r, (a, b) in zip(results, layers):
        if logits_on == "vocab_split":  # rank 0 embeds the input; every other rank holds its slice of the head
            head = embedding if r["rank"] == 0 else embedding / world
        else:
            head = embedding * (logits_on == "every_rank" or r["rank"] in (0, world - 1))
        share = head + (whole_params - embedding) * (b - a) / 30
        assert r["param_bytes"] == pytest.approx(share, rel=0.02)
        print(f"  rank {r['rank']}: peak RSS {r['peak_rss'] / 1e6:.0f} MB vs whole model {whole_rss / 1e6:.0f} MB")
        # The weights this rank does not hold are not resident either (most of them: allow 40% slack
        # for allocator and runtime noise). Holding the whole model would put it at or above whole_rss.
        assert r["peak_rss"] < whole_rss - 0.6 * (whole_params - r["param_bytes"])








@pytest.mark.slow
def test_a_pipeline_with_the_cpu_kernel_gives_one_kernel_processs_tokens(shared_models, tmp_path):  # noqa: ANN001
    """With exo's CPU kernel the activations are int8, so any change in the order of a float sum grows over 30
    layers into logits as far apart as the int8 error: only the same arithmetic gives the same tokens. A pipeline
    stage runs its layers as one process does, and the head split by vocabulary (rank 0's slice a view of the tied
    embedding) goes through the kernel as one process's head does: the tokens are identical. (Before the slices
    took the kernel, they were MLX's float product and the tokens parted at the 49th.)"""
    q4 = shared_models.path("q4")
    kernel = ("--cpu-kernel", "on")
    (tmp_path / "single").mkdir(), (tmp_path / "pipeline").mkdir()
    (alone,) = run_ranks(q4, "single", 1, tmp_path / "single", max_tokens=128, extra=kernel)
    results = run_ranks(q4, "pipeline", 3, tmp_path / "pipeline", [(0, 10), (10, 20), (20, 30)], 128, kernel)
    for r in results:
        assert r["tokens"] == alone["tokens"], f"rank {r['rank']} differs at {common_prefix(r['tokens'], alone['tokens'])}"


@pytest.mark.slow
def test_tensor_parallel_refuses_two_ranks_for_smollm2(f32_model):
    from mlx_lm.utils import load_model

    from services.worker.runner.model.sharding import ShardingError, shard_tensor

    class TwoRanks:
        def size(self) -> int:
            return 2

        def rank(self) -> int:
            return 0

    model, _ = load_model(f32_model, lazy=True)
    with pytest.raises(ShardingError, match="9 attention heads, 3 KV heads do not divide by 2"):
        shard_tensor(model, TwoRanks())  # type: ignore[arg-type]


@pytest.mark.slow
def test_untied_random_llama_pipeline_and_tensor(tiny_untied_model, tmp_path):
    """A model with a separate lm_head (not tied): the embedding stays on rank 0 only, the head is split by
    vocabulary rows over the ranks. 2-stage pipeline and 2-rank tensor parallel against one process."""
    (one,) = run_ranks(tiny_untied_model, "single", 1, _sub(tmp_path, "one"), max_tokens=24)
    pipe = run_ranks(tiny_untied_model, "pipeline", 2, _sub(tmp_path, "pipe"), [(0, 1), (1, 4)], max_tokens=24)
    for r in pipe:
        assert r["tokens"] == one["tokens"]
    matrix = 49152 * 64 * 4  # vocab x hidden, float32: the embedding, and the head
    layers = [one["param_bytes"] - 2 * matrix] * 2  # upper bound of a rank's layers (and norms)
    # Rank 0: the embedding and half the head; rank 1: half the head. Never the whole head.
    assert 1.5 * matrix <= pipe[0]["param_bytes"] < 1.5 * matrix + layers[0], pipe[0]["param_bytes"]
    assert 0.5 * matrix <= pipe[1]["param_bytes"] < 0.5 * matrix + layers[1], pipe[1]["param_bytes"]
    tensor = run_ranks(tiny_untied_model, "tensor", 2, _sub(tmp_path, "tensor"), max_tokens=24)
    for r in tensor:  # the embedding (every rank embeds its input) and half the head
        assert 1.5 * matrix <= r["param_bytes"] < 1.5 * matrix + layers[0], r["param_bytes"]
    assert tensor[0]["tokens"] == tensor[1]["tokens"]
    print(f"untied tensor x2: first {common_prefix(tensor[0]['tokens'], one['tokens'])} of 24 tokens identical")
    assert common_prefix(tensor[0]["tokens"], one["tokens"]) >= 8


def _sub(path: Path, name: str) -> Path:
    (path / name).mkdir()
    return path / name




def test_a_request_cancelled_in_the_control_that_submits_it_ends_as_cancelled(f32_model):
    """Rank 0 posts newcomers one step ahead, so a client can cancel before its request ever joined the batch:
    the same control then carries both. The request must still end (the runner frees its queue place)."""
    from services.worker.runner.serve.control import Control, Submit
    from services.worker.runner.serve.engine import Engine, Step
    from services.worker.runner.model.sharding import load_shard
    from shared.generation import SamplingParams

    model, tokenizer = load_shard(f32_model, "single")
    engine = Engine(model, tokenizer, max_batch=2)
    sampling = SamplingParams(max_tokens=4, temperature=0.0)
    steps, _ = engine.run_cycle(Control([Submit("gone", [1, 2, 3], sampling), Submit("kept", [1, 2, 3], sampling)], ["gone"]))
    assert Step("gone", "", 0, "cancelled") in steps
    assert "gone" not in engine.uids and "kept" in engine.uids
