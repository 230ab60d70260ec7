#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include "fused_layer.h"
#include "logsumexp.h"
#include "qmv.h"

namespace nb = nanobind;
using namespace nb::literals;
namespace mx = mlx::core;

NB_MODULE(_exo_kernels, m) {
  m.doc() = "exo's CPU kernels for MLX: a quantized matrix-vector product with int8 dot products";
  m.def("quantized_matvec", &exo::quantized_matvec, "x"_a, "w"_a, "scales"_a, "biases"_a, "group_size"_a, "bits"_a,
        "x (..., K) float32 times the MLX-quantized w (N, K*bits/32) transposed: (..., N) float32");
  m.def(
      "attention_in",
      [](const mx::array& x, const mx::array& norm, const std::vector<mx::array>& qkv, const mx::array& inv_freqs,
         const mx::array& positions, int n_heads, int n_kv_heads, int head_dim, int group_size, int bits, float eps,
         bool traditional) {
        return exo::attention_in(x, norm, qkv, inv_freqs, positions,
                                 {n_heads, n_kv_heads, head_dim, group_size, bits, eps, traditional});
      },
      "x"_a, "norm"_a, "qkv"_a, "inv_freqs"_a, "positions"_a, "n_heads"_a, "n_kv_heads"_a, "head_dim"_a,
      "group_size"_a, "bits"_a, "eps"_a, "traditional"_a,
      "a decode step's RMSNorm, q/k/v projections and RoPE: [q (B, H, 1, hd), k, v (B, Hkv, 1, hd)]");
  m.def(
      "attention_out",
      [](const mx::array& h, const mx::array& q, const mx::array& keys, const mx::array& values, const mx::array& starts,
         const std::vector<mx::array>& weights, const mx::array& norm, float scale, int n_heads, int n_kv_heads,
         int head_dim, int group_size, int bits, float eps) {
        return exo::attention_out(h, q, keys, values, starts, weights, norm, scale,
                                  {n_heads, n_kv_heads, head_dim, group_size, bits, eps, false});
      },
      "h"_a, "q"_a, "keys"_a, "values"_a, "starts"_a, "weights"_a, "norm"_a, "scale"_a, "n_heads"_a, "n_kv_heads"_a,
      "head_dim"_a, "group_size"_a, "bits"_a, "eps"_a,
      "a decode step's attention over the cache, o projection, residual, RMSNorm, SwiGLU MLP and residual: (B, 1, D)");
  m.def("logsumexp_rows", &exo::logsumexp_rows, "x"_a,
        "log(sum(exp(x))) over the last axis of float32 x (..., V): (..., 1), with a vectorized exp");
  m.def("isa", &exo::isa_name, "the kernel in use: scalar, avx2 or avx512vnni");
  m.def("best_isa", &exo::best_isa_name, "the best kernel this CPU supports");
  m.def("set_isa", &exo::set_isa, "name"_a, "use this kernel (at most the best supported)");
  m.def("threads", &exo::threads, "threads per call, the calling one included");
  m.def("set_threads", &exo::set_threads, "n"_a);
}
