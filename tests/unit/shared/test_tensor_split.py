"""The tensor-parallel rule placement and the runner share (shared/tensor_split.py)."""

from shared.tensor_split import tensor_split_problem, tensor_ways


def test_grouped_query_families_need_heads_and_kv_heads_to_divide():
    for family in ("llama", "qwen2", "mixtral", "qwen3_moe", "mistral"):
        assert tensor_split_problem(family, 64, 8, 8) is None
        problem = tensor_split_problem(family, 64, 8, 16)
        assert problem is not None and "8 KV heads" in problem and "attention heads" not in problem
    assert tensor_split_problem("llama", 9, 3, 2) == (
        "tensor parallel over 2 ranks needs divisible heads: 9 attention heads, 3 KV heads do not divide by 2"
    )


def test_deepseek_mla_counts_only_query_heads():
    # MLA caches one latent for all heads: a KV head count in its config does not constrain the split.
    assert tensor_split_problem("deepseek_v3", 128, 1, 16) is None
    assert tensor_split_problem("deepseek_v3", 128, 128, 3) == (
        "tensor parallel over 3 ranks needs divisible heads: 128 attention heads do not divide by 3"
    )


def test_unknown_families_are_refused_by_name_and_one_rank_always_fits():
    problem = tensor_split_problem("gemma3", 8, 4, 2)
    assert problem is not None and "'gemma3'" in problem and "qwen3_moe" in problem
    assert tensor_split_problem("gemma3", 8, 4, 1) is not None  # the family itself is the problem
    assert tensor_split_problem("llama", 9, 3, 1) is None
    assert tensor_split_problem("llama", 8, 8, 0) == "world size 0 < 1"


def test_how_many_ways():
    assert tensor_ways("llama", 9, 3, 8) == [3]
    assert tensor_ways("qwen2", 64, 8, 8) == [2, 4, 8]
    assert tensor_ways("mixtral", 48, 8, 8) == [2, 4, 8]
    assert tensor_ways("deepseek_v3", 128, 128, 8) == [2, 4, 8]
    assert tensor_ways("gpt2", 12, 12, 8) == []
