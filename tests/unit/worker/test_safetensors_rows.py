"""Reading a row range of one tensor from safetensors files written by MLX itself."""

import mlx.core as mx
import pytest

from services.worker.runner.model.safetensors_rows import read_rows


@pytest.fixture
def folder(tmp_path):
    mx.random.seed(3)
    tensors = {
        "model.embed_tokens.weight": mx.random.normal((10, 4)),
        "lm_head.weight": mx.random.normal((10, 4)).astype(mx.bfloat16),
        "lm_head.scales": mx.random.normal((10, 2)).astype(mx.float16),
        "q.weight": mx.random.randint(0, 2**31, (10, 3)).astype(mx.uint32),
    }
    # Two files, as a sharded checkpoint has: the reader finds the one that holds the name.
    mx.save_safetensors(str(tmp_path / "model-00001-of-00002.safetensors"), {"model.embed_tokens.weight": tensors["model.embed_tokens.weight"]})
    mx.save_safetensors(str(tmp_path / "model-00002-of-00002.safetensors"), {k: v for k, v in tensors.items() if k != "model.embed_tokens.weight"})
    return tmp_path, tensors


@pytest.mark.parametrize("name", ["model.embed_tokens.weight", "lm_head.weight", "lm_head.scales", "q.weight"])
@pytest.mark.parametrize("start, end", [(0, 4), (4, 8), (8, 10), (3, 3)])
def test_rows_equal_the_slice_of_the_whole_tensor(folder, name, start, end):
    path, tensors = folder
    rows = read_rows(path, name, start, end)
    assert rows is not None and rows.dtype == tensors[name].dtype
    assert rows.shape == (end - start, *tensors[name].shape[1:])
    assert mx.array_equal(rows, tensors[name][start:end]).item()


def test_a_missing_name_or_a_range_outside_the_tensor_gives_none(folder):
    path, _ = folder
    assert read_rows(path, "lm_head.biases", 0, 2) is None
    assert read_rows(path, "lm_head.weight", 8, 11) is None
