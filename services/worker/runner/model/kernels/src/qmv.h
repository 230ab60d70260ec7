// exo's quantized matrix-vector product as an MLX primitive: y = x @ dequantize(w, scales, biases).T for a
// few rows of x, on the CPU.
#pragma once

#include <string>

#include "mlx/array.h"
#include "mlx/primitives.h"

namespace exo {

namespace mx = mlx::core;

// x: (..., K) float32; w: (N, K * bits / 32) uint32 in MLX's affine layout; scales and biases: (N, K /
// group_size), float32 or float16. Returns (..., N) float32.
mx::array quantized_matvec(
    const mx::array& x, const mx::array& w, const mx::array& scales, const mx::array& biases, int group_size, int bits);

class QuantizedMatVec : public mx::Primitive {
 public:
  QuantizedMatVec(mx::Stream stream, int group_size, int bits)
      : mx::Primitive(stream), group_size_(group_size), bits_(bits) {}
  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  void eval_gpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  const char* name() const override { return "ExoQuantizedMatVec"; }
  bool is_equivalent(const mx::Primitive& other) const override;

 private:
  int group_size_, bits_;
};

std::string isa_name();           // the kernel in use: scalar, avx2, avx512vnni
std::string best_isa_name();      // the best this CPU supports
void set_isa(const std::string& name);  // at most the best; "scalar" forces the portable kernel
int threads();
void set_threads(int n);

} // namespace exo
