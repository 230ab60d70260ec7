// The row kernels of exo's quantized matrix-vector product: y[b, n] = sum_k W[n, k] * x[b, k] for a few
// activation rows b (1..8), W in MLX's affine quantized layout (4 or 8 bits, per-group scale and bias).
//
// The activations are first quantized to int8 per block of 32 (as llama.cpp's q8 does), so the inner
// product is an integer one: sum_k (s*q_k + b) * x_k = s * dx * sum_k q_k*xq_k + b * sum_k x_k, with the
// block's float sum kept exact. Each ISA (scalar, AVX2, AVX-512 VNNI) lives in its own translation unit,
// compiled with its own flags, and is picked at run time by the CPU's features.
#pragma once

#include <cstdint>

namespace exo {

constexpr int kBlock = 32;   // activation quantization block (and the smallest group size)
constexpr int kMaxBatch = 8; // activation rows handled in one pass over the weights

enum class Isa : int { scalar = 0, avx2 = 1, avx512vnni = 2 };

// Activations of B rows quantized per block. For 4-bit weights a block's 32 int8 are stored evens first
// then odds, matching the low and high nibbles of MLX's packing (so the weights need no repacking).
struct QuantX {
  const int8_t* q;   // [B][K]
  const float* d;    // [B][K / 32] scale of each block
  const float* sum;  // [B][K / 32] exact float sum of each block
};

struct QWeights {
  const uint8_t* w;      // [N][K * bits / 8], MLX's packing read as little-endian bytes
  const void* scales;    // [N][K / group_size], float32 or float16 (f16 == true)
  const void* biases;    // same
  bool f16;
  int N, K, group_size, bits;
};

void quantize_x(const float* x, int B, int K, int bits, int8_t* q, float* d, float* sum);

// Rows [n0, n1) of y ([B][N], row-major); B in 1..kMaxBatch.
void rows_scalar(const QWeights& w, const QuantX& x, int B, float* y, int n0, int n1);
void rows_avx2(const QWeights& w, const QuantX& x, int B, float* y, int n0, int n1);
void rows_avx512vnni(const QWeights& w, const QuantX& x, int B, float* y, int n0, int n1);

float half_to_float(uint16_t h);

} // namespace exo
