"""The fused decoder layer (services/worker/runner/model/fused_layer.py, kernels/src/fused_layer.cpp) on the real
SmolLM2 q4: decode steps in two primitives per layer, against MLX's own quantized path and against our kernel
unfused; a batch with left padding through the engine; the fallbacks; and the ops it saves.
"""

from __future__ import annotations

import platform
import re
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlx.core as mx
import numpy as np
import openai
import pytest
from mlx_lm.models.cache import BatchKVCache, KVCache, make_prompt_cache
from mlx_lm.utils import load_model

from services.worker.models.store import ModelStore
from services.worker.runner.model.fused_layer import FusedDecoderLayer, fusable, fuse_layers
from services.worker.runner.model.quantized_cpu import use_cpu_kernel
from services.worker.runner.model.sharding import load_shard
from services.worker.runner.serve.control import Submit
from services.worker.runner.serve.engine import Engine
from shared.generation import SamplingParams
from shared.models import get_card
from tests.integration import model_steps
from tests.nodes import Node

if platform.system() != "Linux":  # setup.sh builds the kernel on Linux only (Metal serves macOS)
    pytest.skip("exo's CPU kernel is built on Linux only", allow_module_level=True)

PROMPT = [1, 504, 3458, 282, 4649, 314, 253, 1789, 30, 198] * 3


@pytest.fixture(scope="module")
def q4_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ModelStore(tmp_path_factory.mktemp("models")).ensure(get_card("smollm2-135m"), "q4")


def fused_steps(model) -> int:  # noqa: ANN001
    return sum(layer.fused_steps for layer in model.model.layers if isinstance(layer, FusedDecoderLayer))


def test_greedy_tokens_match_mlx_quantized_path(q4_path: Path) -> None:
    theirs, _ = load_model(q4_path)
    ours, _ = load_shard(q4_path, "single", cpu_kernel="on", cpu_fusion="on")
    assert all(isinstance(layer, FusedDecoderLayer) for layer in ours.model.layers)
    expected, expected_logits = model_steps.greedy(theirs, 128, PROMPT)
    got = model_steps.forced(ours, PROMPT, expected)  # teacher-forced on MLX's tokens
    assert fused_steps(ours) == 128 * 30  # every step of every layer took the fused path (the prompt's 30 tokens too)
    # The same bounds as the unfused kernel's (test_quantized_cpu.py): the int8 activations' error, no more.
    # Measured: the same argmax at all 128 steps (free-running too: the same 128 tokens), worst max 1.07 / mean 0.54.
    seen = model_steps.agreement(expected, expected_logits, got)
    assert seen["parted"] <= 4 and seen["widest_margin"] < 0.3, seen
    assert seen["worst_max"] < 2.5 and seen["worst_mean"] < 1.2, seen


def test_one_layer_equals_the_unfused_layer_to_rounding(q4_path: Path) -> None:
    """Same input and cache: the layer's output, the new keys and values. The difference is float rounding, which
    the next product's int8 activations may turn into one step of their quantization, hence the bound."""
    model, _ = load_model(q4_path)
    use_cpu_kernel(model)
    load_unfused = load_shard(q4_path, "single", cpu_kernel="on", cpu_fusion="on")[0]
    layer = load_unfused.model.layers[2]
    assert isinstance(layer, FusedDecoderLayer)
    block = layer.original
    mx.random.seed(3)
    prefix, x = mx.random.normal((1, 7, 576)), mx.random.normal((1, 1, 576))
    theirs, ours = KVCache(), KVCache()
    block(prefix, "causal", theirs)
    block(prefix, "causal", ours)
    expected, got = block(x, None, theirs), layer(x, None, ours)
    assert layer.fused_steps == 1 and ours.offset == theirs.offset == 8
    assert float(mx.abs(expected - got).max() / mx.abs(expected).max()) < 1e-3
    assert float(mx.abs(theirs.keys[..., :8, :] - ours.keys[..., :8, :]).max()) < 1e-4
    assert float(mx.abs(theirs.values[..., :8, :] - ours.values[..., :8, :]).max()) < 1e-4


def test_a_padded_batch_layer_equals_the_unfused_layer(q4_path: Path) -> None:
    """Two rows of different lengths in mlx-lm's BatchKVCache (left padding): each row's attention starts at its own
    first key and its RoPE at its own position. Attending to the padding, or rotating by the padded position, moves
    the output by far more than the bound (tried: starts of 0 give a relative difference of ~0.5 in the padded row,
    its position counted from the padding ~0.2)."""
    model, _ = load_shard(q4_path, "single", cpu_kernel="on", cpu_fusion="on")
    layer = model.model.layers[4]
    block = layer.original
    mx.random.seed(5)
    prefix, x = mx.random.normal((2, 9, 576)), mx.random.normal((2, 1, 576))
    caches = []
    for _ in range(2):
        cache = BatchKVCache([0, 6])  # row 1: 3 real tokens after 6 of padding
        block(prefix, cache.make_mask(9), cache)
        caches.append(cache)
    expected = block(x, caches[0].make_mask(1), caches[0])
    got = layer(x, caches[1].make_mask(1), caches[1])
    assert layer.fused_steps == 1
    for row in range(2):
        diff = float(mx.abs(expected[row] - got[row]).max() / mx.abs(expected[row]).max())
        assert diff < 1e-3, (row, diff)


def test_rows_at_once_equal_them_one_at_a_time(q4_path: Path) -> None:
    """A prompt prefilled whole or in pieces (the prefix cache held part of it, the batch's prefill slices), a draft's
    tokens verified at once: through the fused layers each row is what it is alone (the same products, each row's
    attention over the keys up to its own), so the tokens are the same either way. Bit for bit, in a plain cache and
    in a left-padded batch; the keys too."""
    model, _ = load_shard(q4_path, "single", cpu_kernel="on", cpu_fusion="on")
    prompt, new = PROMPT * 2, [504, 3458, 282, 4649, 314, 253]
    steps, once = make_prompt_cache(model), make_prompt_cache(model)
    mx.eval(model(mx.array([prompt[:23]]), cache=steps), model(mx.array([prompt[23:]]), cache=steps))  # two pieces
    mx.eval(model(mx.array([prompt]), cache=once))  # whole
    assert mx.array_equal(steps[5].keys[..., : steps[5].offset, :], once[5].keys[..., : once[5].offset, :])
    one_by_one = [model(mx.array([[t]]), cache=steps)[0, -1] for t in new]
    before = fused_steps(model)
    together = model(mx.array([new]), cache=once)[0]
    assert fused_steps(model) == before + 30
    assert all(mx.array_equal(a, together[i]) for i, a in enumerate(one_by_one))
    assert mx.array_equal(steps[5].keys[..., : steps[5].offset, :], once[5].keys[..., : once[5].offset, :])

    padded = [[0] * 6 + PROMPT[:24], PROMPT]  # two sequences, the first after 6 of padding
    rows = mx.array([new[:3], new[3:]])
    caches = [[BatchKVCache([6, 0]) for _ in model.model.layers] for _ in range(2)]
    for cache in caches:
        mx.eval(model(mx.array(padded), cache=cache))
    stepped = mx.concatenate([model(rows[:, i : i + 1], cache=caches[0]) for i in range(3)], axis=1)
    assert mx.array_equal(stepped, model(rows, cache=caches[1]))
    for row, sequence in enumerate([PROMPT[:24], PROMPT]):  # each sequence alone: its rows are the batch's
        alone = make_prompt_cache(model)
        mx.eval(model(mx.array([sequence]), cache=alone))
        # The padded one's attention starts 6 keys on, at its own first key, and its RoPE at its own position 0.
        assert mx.array_equal(model(rows[row : row + 1], cache=alone)[0], stepped[row]), row


def test_a_padded_batch_through_the_engine(q4_path: Path) -> None:
    """The same two-row batch as a runner runs it: both requests finish, the fused path took the steps, and each
    request's text is the one it has alone: a row's arithmetic does not depend on its batch (the kernel's products,
    the attention over its own keys from its own first one). Not compared with MLX's float path: the int8
    activations make any change of float order grow, over 30 layers, into logits as far apart as the int8 error
    itself (test_quantized_cpu.py), so a near-tie goes either way."""
    fused, tokenizer = load_shard(q4_path, "single", cpu_kernel="on", cpu_fusion="on")
    chats = {"long": "Tell me a long story about a lighthouse keeper and a storm.", "short": "Name a color."}
    prompts = {rid: tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)
               for rid, text in chats.items()}  # fmt: skip
    assert len(prompts["long"]) > len(prompts["short"]) + 8
    engine = Engine(fused, tokenizer)
    submits = [Submit(rid, p, SamplingParams(max_tokens=16, temperature=0.0)) for rid, p in prompts.items()]
    steps = model_steps.run_batch(engine, submits)
    assert fused_steps(fused) >= 15 * 30
    texts = {rid: model_steps.text(s) for rid, s in steps.items()}
    assert all(s[-1].finish_reason in ("length", "stop") and len(s) <= 16 for s in steps.values())
    for rid, prompt in prompts.items():
        alone = model_steps.run_batch(Engine(fused, tokenizer), [Submit(rid, prompt, SamplingParams(max_tokens=16, temperature=0.0))])
        assert model_steps.text(alone[rid]) == texts[rid], (rid, texts)


def test_a_prefill_takes_the_fused_path_and_no_cache_the_original_layer(q4_path: Path) -> None:
    model, _ = load_shard(q4_path, "single", cpu_kernel="on", cpu_fusion="on")
    layer = model.model.layers[0]
    layer(mx.random.normal((1, 1, 576)), None, None)  # no cache
    assert layer.fused_steps == 0
    layer(mx.random.normal((1, 40, 576)), "causal", KVCache())  # a prefill of 40 tokens
    assert layer.fused_steps == 1
    assert layer.use_sliding is False  # what llama's make_cache reads off its layers


def test_only_layers_the_kernel_serves_are_fused(q4_path: Path) -> None:
    without_kernel, _ = load_shard(q4_path, "single", cpu_kernel="off", cpu_fusion="on")
    assert not any(isinstance(layer, FusedDecoderLayer) for layer in without_kernel.model.layers)
    unfused, _ = load_shard(q4_path, "single", cpu_kernel="on", cpu_fusion="off")
    assert not any(isinstance(layer, FusedDecoderLayer) for layer in unfused.model.layers)
    assert not fusable(unfused.model.layers[0])  # the kernel's linears but mlx-lm's own RoPE module
    assert fuse_layers(unfused) == 0


def test_fewer_ops_per_decode_step(q4_path: Path) -> None:
    """Graph ops of one decode step (the same count as bench.step_ops), fused against unfused."""
    counts = {}
    for fusion in ("off", "on"):
        model, _ = load_shard(q4_path, "single", cpu_kernel="on", cpu_fusion=fusion)
        cache = make_prompt_cache(model)
        mx.eval(model(mx.array([PROMPT]), cache=cache))
        out = model(mx.array([[PROMPT[0]]]), cache=cache)
        counts[fusion] = _ops(out)
    assert counts["on"] < counts["off"] / 4, counts


def _ops(out: mx.array) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        dot = Path(tmp) / "step.dot"
        mx.export_to_dot(str(dot), out)
        return len(re.findall(r'label ="([A-Za-z][A-Za-z0-9_]*)', dot.read_text()))


def test_the_batch_rows_are_independent(q4_path: Path) -> None:
    """Row 0 of a batch of two gives the same logits as the same row alone (the fused path never mixes rows)."""
    model, _ = load_shard(q4_path, "single", cpu_kernel="on", cpu_fusion="on")
    alone, _ = model_steps.greedy(model, 8, PROMPT)
    cache = make_prompt_cache(model)
    logits = model(mx.array([PROMPT, PROMPT[::-1]]), cache=cache)[:, -1, :]
    tokens = []
    for _ in range(8):
        token = mx.argmax(logits, axis=-1)
        tokens.append(int(np.array(token)[0]))
        logits = model(token[:, None], cache=cache)[:, -1, :]
    assert tokens == alone


def test_a_node_with_the_kernel_decodes_through_fused_layers(start_node: Callable[..., Node]) -> None:
    """A real node with `--cpu-kernel on`, the official openai client: the runner says what it runs, greedy output is
    the same streamed or not, and four concurrent streams (one batch) all finish."""
    node = start_node("fused", "--cpu-kernel", "on")
    try:
        details = node.runner_details()
        assert details and "q4+exo-kernel" in details[0] and "fused decode layers 30" in details[0]
        client = openai.OpenAI(base_url=node.api_url, api_key="none", timeout=120.0, max_retries=0)
        messages = [{"role": "user", "content": "Tell me a story about a lighthouse."}]
        whole = client.chat.completions.create(model="smollm2-135m", messages=messages, max_tokens=24, temperature=0)
        pieces = client.chat.completions.create(model="smollm2-135m", messages=messages, max_tokens=24, temperature=0,
                                                stream=True)  # fmt: skip
        streamed = "".join(c.choices[0].delta.content or "" for c in pieces if c.choices)
        assert whole.choices[0].message.content and streamed == whole.choices[0].message.content
        assert whole.usage is not None and whole.usage.completion_tokens == 24

        def one(i: int) -> int | None:
            reply = client.chat.completions.create(
                model="smollm2-135m", messages=[{"role": "user", "content": f"Count to {i + 3}."}], max_tokens=16,
                temperature=0.7, seed=i,
            )  # fmt: skip
            return reply.usage.completion_tokens if reply.usage else None

        with ThreadPoolExecutor(4) as pool:
            counts = list(pool.map(one, range(4)))
        assert all(c is not None and 0 < c <= 16 for c in counts), counts
    finally:
        node.stop()
