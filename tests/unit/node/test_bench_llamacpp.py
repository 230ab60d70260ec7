"""The llama.cpp benchmark's build options (bench/llamacpp.py): native where the CPU has no AMX, the CPU's own
features named one by one without AMX where it reports it (ggml's AMX matmul segfaulted on such a VM)."""

from __future__ import annotations

from bench.llamacpp import llama_cmake_args

SPR_LIKE = {"avx", "avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx512vbmi", "avx512_bf16", "bmi2", "amx_int8",
            "amx_tile", "amx_bf16"}  # fmt: skip


def test_native_build_without_amx() -> None:
    assert llama_cmake_args({"avx", "avx2", "fma", "f16c", "avx512f", "avx512_vnni"}) == ""
    assert llama_cmake_args(set()) == ""


def test_amx_cpu_names_its_features_and_turns_amx_off() -> None:
    args = llama_cmake_args(SPR_LIKE).split()
    assert "-DGGML_NATIVE=OFF" in args
    for on in ("AVX", "AVX2", "FMA", "F16C", "AVX512", "AVX512_VNNI", "AVX512_VBMI", "AVX512_BF16", "BMI2"):
        assert f"-DGGML_{on}=ON" in args, on
    assert "-DGGML_AVX_VNNI=OFF" in args  # not in the flags above
    for amx in ("AMX_TILE", "AMX_INT8", "AMX_BF16"):
        assert f"-DGGML_{amx}=OFF" in args
