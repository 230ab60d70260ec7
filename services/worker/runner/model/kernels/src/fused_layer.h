// A Llama-family decoder layer (a decode step, a draft's rows, a prefill) in two MLX primitives instead of ~50 ops.
//
// On a CPU every MLX op costs ~7-9 us to evaluate however small it is (allocation, the hand-off to the stream
// thread, its wake-up), and one decode step of SmolLM2 is ~1,600 ops: ~12 ms a token of overhead, more than the
// matrix products themselves. For L new tokens per sequence a layer is two primitives here, around the KV cache
// update that stays in MLX (mlx-lm's caches own their buffers). Each row is computed as it would be alone (the
// kernel's products are row by row, each new token attends the keys up to its own), so a prompt prefilled in any
// chunks, or a draft verified at once, gives the values of one token at a time, bit for bit:
//
//   attention_in:  RMSNorm -> q, k, v projections (the activations quantized once) -> RoPE on q and k
//   cache.update_and_fetch(k, v)                                    (MLX: the new k and v written in place)
//   attention_out: attention over the cache (grouped heads, each row from its first valid position) -> o projection
//                  -> + residual -> RMSNorm -> gate and up projections (quantized once) -> SiLU(gate) * up -> down
//                  projection -> + residual
//
// All linears go through exo's quantized kernel (qmv.cpp), so numerics are the kernel's; the rest is float32, in the
// same order of operations as MLX's own ops (to float rounding).
#pragma once

#include "qmv.h"

namespace exo {

struct LayerShape {
  int n_heads, n_kv_heads, head_dim, group_size, bits;
  float eps;
  bool traditional;  // RoPE's pairing: (2i, 2i+1) when true, (i, i + head_dim / 2) otherwise
};

// x (B, L, D); norm weight (D); q/k/v as (w, scales, biases) triples; inv_freqs (head_dim) the rotation's
// frequency per dimension (full width); positions (B) int32, each sequence's first new row's (row l at + l).
// Returns q (B, H, L, hd), k and v (B, Hkv, L, hd).
std::vector<mx::array> attention_in(const mx::array& x, const mx::array& norm, const std::vector<mx::array>& qkv,
                                    const mx::array& inv_freqs, const mx::array& positions, const LayerShape& shape);

// h (B, L, D) the layer's input; q (B, H, L, hd); keys and values (B, Hkv, S, hd), views of the cache after the
// update (its last L keys the new ones; new row l attends the keys up to S - L + l); starts (B) int32 the first
// valid key of each sequence (left padding); o, gate, up, down as 12 arrays (w, scales, biases each); norm the
// post-attention RMSNorm's weight. Returns the layer's output (B, L, D).
mx::array attention_out(const mx::array& h, const mx::array& q, const mx::array& keys, const mx::array& values,
                        const mx::array& starts, const std::vector<mx::array>& weights, const mx::array& norm,
                        float scale, const LayerShape& shape);

class AttentionIn : public mx::Primitive {
 public:
  AttentionIn(mx::Stream stream, LayerShape shape) : mx::Primitive(stream), shape_(shape) {}
  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  void eval_gpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  const char* name() const override { return "ExoAttentionIn"; }

 private:
  LayerShape shape_;
};

class AttentionOut : public mx::Primitive {
 public:
  AttentionOut(mx::Stream stream, LayerShape shape, float scale) : mx::Primitive(stream), shape_(shape), scale_(scale) {}
  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  void eval_gpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  const char* name() const override { return "ExoAttentionOut"; }

 private:
  LayerShape shape_;
  float scale_;
};

} // namespace exo
