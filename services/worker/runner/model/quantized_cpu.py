"""Quantized layers on the CPU through exo's own kernel (kernels/: an MLX primitive built by setup.sh).

MLX's CPU quantized matmul is scalar on x86 and single-threaded, so a 4-bit model decodes ~5x slower than
the dense float32 one. Our kernel quantizes the activations to int8 per block of 32 (as llama.cpp's q8
does) and takes integer dot products with AVX2 or AVX-512 VNNI, reading MLX's own 4-bit and 8-bit layout
unchanged. `use_cpu_kernel` swaps a loaded model's `QuantizedLinear` layers (and the tied head of a
`QuantizedEmbedding`) for modules that call it.

Decode steps (a few rows) run through the kernel; a long prefill dequantizes the weights and uses the
dense BLAS product, which is faster there. The int8 activations move the logits by ~1e-2 relative, as
llama.cpp's do (tests/integration/test_quantized_cpu.py measures it).

`EXO_CPU_KERNEL=auto` uses it where it is built and the CPU has AVX2 (see `wanted`); off (the default) keeps
MLX's own layers (and the worker then chooses dense f32 on a CPU). Float32 scales and biases that are exact in
float16 (a GGUF's) are stored as float16 for the kernel (`_compact`).
"""

from __future__ import annotations

import importlib
from types import ModuleType

import mlx.core as mx
from mlx import nn

from services.worker.runner.model.swap import replace_modules

ENV = "EXO_CPU_KERNEL"
# Rows of activations above which a matmul dequantizes and uses the BLAS: the kernel re-reads the weights
# every 8 rows, a BLAS product of a long prefill does not. Chosen, not yet measured (prefill is a follow-up).
MAX_KERNEL_ROWS = 64
_DTYPE_NAMES = {mx.float32: "f32", mx.float16: "f16", mx.bfloat16: "bf16"}


def _load() -> ModuleType | None:
    try:  # by name: the module exists only where setup.sh built it, and the type check runs either way
        return importlib.import_module("services.worker.runner.model.kernels._exo_kernels")
    except ImportError:
        return None


_kernels = _load()


def kernel_built() -> bool:
    return _kernels is not None


def kernels_module() -> ModuleType | None:
    """The built extension (kernels/_exo_kernels), or None where setup.sh did not build it."""
    return _kernels


def wanted(setting: str = "off") -> bool:
    """Whether to use the kernel: `setting` (the runner setting EXO_CPU_KERNEL) is on, off (the default) or auto. auto: where
    it is built, MLX runs on the CPU and the CPU has the kernel's SIMD path (AVX2 or AVX-512 VNNI): measured
    faster than dense f32 there (bench.kernel, bench.llamacpp); the portable scalar kernel is not, so a CPU
    without them keeps dense f32. on: also with the scalar kernel."""
    value = setting.strip().lower()
    if value not in ("on", "off", "auto"):
        raise ValueError(f"{ENV} must be on, off or auto, not {value!r}")
    if value == "off" or _kernels is None or mx.default_device() != mx.cpu:
        return False
    return value == "on" or _kernels.best_isa() != "scalar"


def configure(isa: str = "", threads: int = 0) -> None:
    """The runner settings EXO_KERNEL_ISA and EXO_KERNEL_THREADS ("" / 0: the kernel's own choice)."""
    if _kernels is None:
        return
    if isa:
        _kernels.set_isa(isa)
    if threads:
        _kernels.set_threads(threads)


def _supported(group_size: int, bits: int, mode: str, in_dims: int) -> bool:
    return mode == "affine" and bits in (4, 8) and group_size in (32, 64, 128) and in_dims % group_size == 0


def kernel_matmul(
    x: mx.array, w: mx.array, scales: mx.array, biases: mx.array | None, group_size: int, bits: int
) -> mx.array:
    """x @ dequantize(w).T: the kernel for a few rows, dequantize + BLAS for many."""
    assert biases is not None, "affine quantization has biases"
    rows = x.size // x.shape[-1] if x.ndim else 1
    if rows > MAX_KERNEL_ROWS:  # float16 scales (_compact) widened first: s * q + b in float32, as before
        dense = mx.dequantize(w, _wide(scales), _wide(biases), group_size=group_size, bits=bits)
        return x @ dense.astype(x.dtype).T
    assert _kernels is not None
    y = _kernels.quantized_matvec(x if x.dtype == mx.float32 else x.astype(mx.float32), w, scales, biases, group_size, bits)
    return y if x.dtype == mx.float32 else y.astype(x.dtype)


def _compact(scales: mx.array, biases: mx.array | None) -> tuple[mx.array, mx.array | None]:
    """float32 scales and biases as float16 where that is exact (a GGUF's Q4_1 and Q8_0 store float16 ones, which
    the import widened): the kernel reads 2 bytes per group instead of 4, ~15% of a q4 model's bytes per token."""
    if biases is None or scales.dtype != mx.float32 or biases.dtype != mx.float32:
        return scales, biases
    s16, b16 = scales.astype(mx.float16), biases.astype(mx.float16)
    exact = mx.array_equal(s16.astype(mx.float32), scales) & mx.array_equal(b16.astype(mx.float32), biases)
    return (s16, b16) if bool(exact.item()) else (scales, biases)


def _wide(a: mx.array) -> mx.array:
    return a.astype(mx.float32) if a.dtype == mx.float16 else a


class KernelLinear(nn.Module):
    """`nn.QuantizedLinear` (affine, 4 or 8 bits) with the same parameters, computed by our kernel."""

    def __init__(self, layer: nn.QuantizedLinear) -> None:
        super().__init__()
        self.weight = layer.weight
        self.scales, self.biases = _compact(layer.scales, layer.biases)
        if "bias" in layer:
            self.bias = layer.bias
        self.group_size, self.bits = layer.group_size, layer.bits

    def __call__(self, x: mx.array) -> mx.array:
        y = kernel_matmul(x, self.weight, self.scales, self.biases, self.group_size, self.bits)
        return y + self.bias if "bias" in self else y


class KernelEmbedding(nn.QuantizedEmbedding):
    """`nn.QuantizedEmbedding` whose `as_linear` (a tied head) uses our kernel; lookups give the same float32 values
    (the looked-up rows' float16 scales widened before the product)."""

    def __init__(self, embedding: nn.QuantizedEmbedding) -> None:
        nn.Module.__init__(self)
        self.group_size, self.bits, self.mode = embedding.group_size, embedding.bits, embedding.mode
        self.weight = embedding.weight
        self.scales, self.biases = _compact(embedding.scales, embedding.biases)
        self.num_embeddings, self.dims = embedding.num_embeddings, embedding.dims
        self.freeze()

    def __call__(self, x: mx.array) -> mx.array:
        biases = None if self.biases is None else _wide(self.biases[x])
        return mx.dequantize(self.weight[x], scales=_wide(self.scales[x]), biases=biases, group_size=self.group_size,
                             bits=self.bits)  # fmt: skip

    def as_linear(self, x: mx.array) -> mx.array:
        return kernel_matmul(x, self.weight, self.scales, self.biases, self.group_size, self.bits)


def _swapped(module: nn.Module) -> nn.Module | None:
    # Exact types only: the distributed (sharded) quantized linears keep their own modules.
    if type(module) is nn.QuantizedLinear and _supported(
        module.group_size, module.bits, module.mode, module.weight.shape[1] * 32 // module.bits
    ):
        return KernelLinear(module)
    if type(module) is nn.QuantizedEmbedding and _supported(module.group_size, module.bits, module.mode, module.dims):
        return KernelEmbedding(module)
    return None


def use_cpu_kernel(model: nn.Module) -> int:
    """Replace the model's supported quantized layers in place (also inside lists); returns how many."""
    return replace_modules(model, _swapped)


def weights_detail(model: nn.Module) -> str:
    """For the runner's ready status: 'weights f32', 'weights q4', 'weights q4+exo-kernel (avx512vnni)'."""
    bits: set[int] = set()
    kernel = False
    dtype = None
    for _, module in model.named_modules():
        if isinstance(module, (KernelLinear, KernelEmbedding)):
            kernel = True
        if isinstance(module, (KernelLinear, nn.QuantizedLinear)) and not isinstance(module, KernelEmbedding):
            bits.add(module.bits)
        elif isinstance(module, nn.Linear) and dtype is None:
            dtype = module.weight.dtype
    device = "" if mx.default_device() == mx.cpu else ", device gpu"
    if not bits:
        return f"weights {_DTYPE_NAMES.get(dtype, str(dtype)) if dtype is not None else 'unknown'}{device}"
    name = "+".join(f"q{b}" for b in sorted(bits))
    if kernel and _kernels is not None:
        return f"weights {name}+exo-kernel ({_kernels.isa()})"
    return f"weights {name}{device}"
