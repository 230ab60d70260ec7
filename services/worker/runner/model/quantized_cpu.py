"""Quantized layers on the CPU through exo's own kernel (kernels/: an MLX primitive built by setup.sh).

MLX's CPU quantized matmul is scalar on x86 and single-threaded, so a 4-bit model decodes ~5x slower than
the dense float32 one. Our kernel quantizes the activations to int8 per block of 32 (as llama.cpp's q8
does) and takes integer dot products with AVX2 or AVX-512 VNNI, reading MLX's own 4-bit and 8-bit layout
unchanged. `use_cpu_kernel` swaps a loaded model's `QuantizedLinear` layers (a tensor split's sharded ones too,
and the tied head of a `QuantizedEmbedding`, whole or split by vocabulary) for modules that call it.

Every product runs through the kernel, a prefill's too (measured faster than dequantize + BLAS at every length).
The int8 activations move the logits by ~1e-2 relative, as llama.cpp's do (tests/integration/test_quantized_cpu.py
measures it).

`EXO_CPU_KERNEL=auto` (the default) uses it where it is built and the CPU has AVX2 (see `wanted`); off keeps
MLX's own layers (and the worker then chooses dense f32 on a CPU). Float32 scales and biases that are exact in
float16 (a GGUF's) are stored as float16 for the kernel (`_compact`).
"""

from __future__ import annotations

import importlib
from types import ModuleType

import mlx.core as mx
from mlx import nn
from mlx.nn.layers.distributed import QuantizedAllToShardedLinear, QuantizedShardedToAllLinear

from services.worker.runner.model.swap import replace_modules

ENV = "EXO_CPU_KERNEL"
_LINEARS = (nn.QuantizedLinear, QuantizedAllToShardedLinear, QuantizedShardedToAllLinear)
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


def wanted(setting: str = "auto") -> bool:
    """Whether to use the kernel: `setting` (the runner setting EXO_CPU_KERNEL) is on, off or auto (the default). auto: where
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
    """x @ dequantize(w).T through the kernel, for any number of rows: a prefill's too. Each row's value is the same
    whatever else the call holds (tests/integration/test_quantized_cpu.py), so a prompt's tokens do not depend on
    its batch or its split. Measured in one process with the runner's MKL, SmolLM2-135M q4, one thread: a prefill
    of 128 / 512 / 1024 tokens in 357 / 2227 / 6904 ms against 904 / 2817 / 7678 with MLX's dequantize and the BLAS
    product above 64 rows, as before; the same to 64 tokens (docs/cpu-engine.md, session 16)."""
    assert biases is not None, "affine quantization has biases"
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


class KernelShardedLinear(KernelLinear):
    """A tensor split's quantized linear (mlx's `QuantizedAllToShardedLinear`: this rank's output rows, or
    `QuantizedShardedToAllLinear`: its input columns, the ranks' partial products added) computed by our kernel,
    so that every topology quantizes the activations as one node does: the int8 blocks of a column slice are the
    whole row's (a slice starts on a group, `width_problems`), and only the sum over the ranks adds in another
    order. A type of its own: the fused layer (fused_layer.py) takes plain `KernelLinear`s only."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__(layer)  # type: ignore[arg-type]  # the same parameters as a QuantizedLinear
        self.sums = type(layer) is QuantizedShardedToAllLinear
        self.group = layer.group

    def __call__(self, x: mx.array) -> mx.array:
        y = kernel_matmul(x, self.weight, self.scales, self.biases, self.group_size, self.bits)
        if self.sums:
            y = mx.distributed.all_sum(y, group=self.group)
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
    # Exact types only: a subclass may compute something else.
    if type(module) in _LINEARS and _supported(
        module.group_size, module.bits, module.mode, module.weight.shape[1] * 32 // module.bits
    ):
        return KernelLinear(module) if type(module) is nn.QuantizedLinear else KernelShardedLinear(module)
    if type(module) is nn.QuantizedEmbedding and _supported(module.group_size, module.bits, module.mode, module.dims):
        return KernelEmbedding(module)
    return None


def use_cpu_kernel(model: nn.Module) -> int:
    """Replace the model's supported quantized layers in place (also inside lists); returns how many. Also the
    heads that a module keeps outside its parameters (a vocabulary slice that is a view of the tied embedding,
    named in its class's `UNCOUNTED_HEADS`), so that a split head computes its logits as one node's head does."""
    replaced = replace_modules(model, _swapped)
    for _, module in model.named_modules():
        for name in getattr(type(module), "UNCOUNTED_HEADS", ()):
            head = module.__dict__.get(name)
            if head is not None and (swapped := _swapped(head)) is not None:
                object.__setattr__(module, name, swapped)
                replaced += 1
    return replaced


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
