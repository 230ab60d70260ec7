// The portable kernel (any CPU; forced with EXO_KERNEL_ISA=scalar for tests) and the activation quantizer.
#include <cmath>
#include <cstring>

#include "qmv_kernels.h"
#include "vec16.h"

namespace exo {

float half_to_float(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1F;
  uint32_t man = h & 0x3FF;
  uint32_t bits;
  if (exp == 0) {
    if (man == 0) {
      bits = sign;
    } else {  // subnormal: renormalize
      int e = -1;
      do {
        man <<= 1;
        ++e;
      } while (!(man & 0x400));
      bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3FF) << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7F800000 | (man << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

using vec::b16x;
using vec::f16x;
using vec::i16x;

// Each block of 32: scale = max |x| / 127, q = x / scale rounded (ties to even), and the block's sum. Built per ISA
// (EXO_CLONES): it runs for every activation row of every product.
EXO_CLONES void quantize_x(const float* x, int B, int K, int bits, int8_t* q, float* d, float* sum) {
  static_assert(kBlock == 32, "two vectors of sixteen per block");
  const int nb = K / kBlock;
  const i16x magnitude = i16x{} + 0x7fffffff;
  for (int b = 0; b < B; ++b) {
    for (int blk = 0; blk < nb; ++blk) {
      const float* xb = x + (size_t)b * K + blk * kBlock;
      const f16x lo = vec::load(xb), hi = vec::load(xb + 16);
      const f16x a_lo = (f16x)((i16x)lo & magnitude), a_hi = (f16x)((i16x)hi & magnitude);
      const float amax = vec::max(a_lo > a_hi ? a_lo : a_hi);
      const float scale = amax / 127.f;
      const float inv = scale > 0.f ? 1.f / scale : 0.f;
      const b16x q_lo = __builtin_convertvector(__builtin_convertvector(vec::round_even(lo * inv), i16x), b16x);
      const b16x q_hi = __builtin_convertvector(__builtin_convertvector(vec::round_even(hi * inv), i16x), b16x);
      int8_t* qb = q + (size_t)b * K + blk * kBlock;
      if (bits == 4) {  // evens in the first half, odds in the second (the nibble order of MLX's packing)
        int8_t v[32];
        std::memcpy(v, &q_lo, 16);
        std::memcpy(v + 16, &q_hi, 16);
        for (int i = 0; i < 16; ++i) qb[i] = v[2 * i], qb[16 + i] = v[2 * i + 1];
      } else {
        std::memcpy(qb, &q_lo, 16);
        std::memcpy(qb + 16, &q_hi, 16);
      }
      d[(size_t)b * nb + blk] = scale;
      sum[(size_t)b * nb + blk] = vec::sum(lo + hi);
    }
  }
}

static inline float load_param(const void* p, size_t i, bool f16) {
  return f16 ? half_to_float(static_cast<const uint16_t*>(p)[i]) : static_cast<const float*>(p)[i];
}

void rows_scalar(const QWeights& w, const QuantX& x, int B, float* y, int n0, int n1) {
  const int nb = w.K / kBlock, groups = w.K / w.group_size, row_bytes = w.K * w.bits / 8;
  for (int n = n0; n < n1; ++n) {
    const uint8_t* wr = w.w + (size_t)n * row_bytes;
    for (int b = 0; b < B; ++b) {
      const int8_t* xq = x.q + (size_t)b * w.K;
      float acc = 0.f;
      for (int blk = 0; blk < nb; ++blk) {
        const int g = blk * kBlock / w.group_size;
        int32_t isum = 0;
        if (w.bits == 4) {
          const uint8_t* wb = wr + blk * 16;
          for (int i = 0; i < 16; ++i) {
            isum += (wb[i] & 0x0F) * xq[blk * kBlock + i] + (wb[i] >> 4) * xq[blk * kBlock + 16 + i];
          }
        } else {
          const uint8_t* wb = wr + blk * kBlock;
          for (int i = 0; i < kBlock; ++i) isum += wb[i] * xq[blk * kBlock + i];
        }
        const size_t gi = (size_t)n * groups + g;
        acc += load_param(w.scales, gi, w.f16) * x.d[(size_t)b * nb + blk] * (float)isum +
               load_param(w.biases, gi, w.f16) * x.sum[(size_t)b * nb + blk];
      }
      y[(size_t)b * w.N + n] = acc;
    }
  }
}

} // namespace exo
