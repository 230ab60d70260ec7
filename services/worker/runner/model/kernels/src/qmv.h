// exo's quantized matrix-vector product as an MLX primitive: y = x @ dequantize(w, scales, biases).T for a
// few rows of x, on the CPU.
#pragma once

#include <string>

#include <functional>
#include <vector>

#include "mlx/array.h"
#include "mlx/primitives.h"
#include "qmv_kernels.h"

namespace exo {

namespace mx = mlx::core;

// The kernel on raw buffers, for primitives that chain several products in one call (fused_layer.cpp).
// Activation rows quantized once, for every weight with the same K and bits.
struct QuantizedActs {
  std::vector<int8_t> q;
  std::vector<float> d, sum;
  int M = 0, K = 0, bits = 0;
  void set(const float* x, int rows, int k, int bits);
};
// y (M, N) = the activations times w transposed, split across the kernel's threads.
void matvec_quantized(const QuantizedActs& a, const QWeights& w, float* y);
// The weights of (w, scales, biases), which must be row-contiguous.
QWeights qweights(const mx::array& w, const mx::array& scales, const mx::array& biases, int group_size, int bits);
// A primitive's eval_cpu: allocates the outputs and runs work(inputs, outputs) on the stream's thread.
void dispatch_cpu(mx::Stream stream, const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs,
                  std::function<void(std::vector<mx::array>&, std::vector<mx::array>&)> work);
// x rows as one contiguous float buffer (a copy into scratch only when x is strided).
const float* contiguous_rows(const mx::array& x, std::vector<float>& scratch);

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
