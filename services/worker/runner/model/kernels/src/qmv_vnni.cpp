// AVX-512 VNNI: vpdpbusd sums four u8 x s8 products straight into int32, for 4-bit and 8-bit weights alike.
// Two blocks of 32 weights go through one 512-bit instruction (16 int32 lanes: 8 per block), and each lane is
// scaled by its block's weight scale times the activation block's scale: the activation scales of every row are
// laid out once per call as 512-bit vectors (d of block j in lanes 0-7, of block j+1 in lanes 8-15), so the
// inner loop per row and block pair is a load, a vpdpbusd, a convert, a multiply and an FMA. The bias term
// (bias * the activation block's exact sum) is a dot product over the groups, taken 16 groups at a time after
// the blocks. An odd last block goes through the 256-bit form.
#include <immintrin.h>

#include <vector>

#include "qmv_kernels.h"

// The 256-bit form for one block per instruction (qmv_simd.inc), for the fewest rows: see rows_avx512vnni.
static inline __m256i exo_dot_vnni(__m256i w, __m256i x) {
  return _mm256_dpbusd_epi32(_mm256_setzero_si256(), w, x);
}
#define EXO_DOT4 exo_dot_vnni
#define EXO_DOT8 exo_dot_vnni
#define EXO_ROWS_FN rows_vnni256
#include "qmv_simd.inc"

namespace exo {
void rows_vnni256(const QWeights& w, const QuantX& x, int B, float* y, int n0, int n1);

// Up to this many rows the 256-bit form is faster (measured: 1 row 10%, 2 rows 10-20%, 3 rows even; from 4 rows the
// wide form wins, 8 rows 15-20%): with few rows its setup per call and 16-lane reductions cost more than they save.
constexpr int kRowsOn256 = 3;

namespace wide {

inline float param(const void* p, size_t i, bool f16) {
  return f16 ? _cvtsh_ss(static_cast<const uint16_t*>(p)[i]) : static_cast<const float*>(p)[i];
}

// 16 consecutive scales or biases (masked: `count` of them) as floats.
inline __m512 params16(const void* p, size_t i, int count, bool f16) {
  const __mmask16 m = (__mmask16)((1u << count) - 1);
  if (f16) return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, static_cast<const uint16_t*>(p) + i));
  return _mm512_maskz_loadu_ps(m, static_cast<const float*>(p) + i);
}

inline __m512 pair(float lo, float hi) {
  const __m512d low = _mm512_castps_pd(_mm512_castps256_ps512(_mm256_set1_ps(lo)));  // AVX-512F only (no DQ)
  return _mm512_castpd_ps(_mm512_insertf64x4(low, _mm256_castps_pd(_mm256_set1_ps(hi)), 1));
}

// One block as 32 unsigned bytes in the activations' order (4-bit: the low nibbles are the even elements).
template <int BITS>
inline __m256i load_block(const uint8_t* row, int blk) {
  if constexpr (BITS == 4) {
    const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + blk * 16));
    return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(raw, 4), raw), _mm256_set1_epi8(0x0F));
  } else {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + blk * kBlock));
  }
}

// Blocks blk and blk + 1 as 64 unsigned bytes, each block in the activations' order.
template <int BITS>
inline __m512i load_pair(const uint8_t* row, int blk) {
  if constexpr (BITS == 4) {
    const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + blk * 16));
    const __m256i nib = _mm256_set1_epi8(0x0F);
    const __m256i lo = _mm256_and_si256(raw, nib), hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), nib);
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_permute2x128_si256(lo, hi, 0x20)),
                              _mm256_permute2x128_si256(lo, hi, 0x31), 1);
  } else {
    return _mm512_loadu_si512(row + blk * kBlock);
  }
}

template <int B, int BITS, bool F16>
void rows_t(const QWeights& w, const QuantX& x, float* y, int n0, int n1) {
  const int nb = w.K / kBlock, pairs = nb / 2, groups = w.K / w.group_size, row_bytes = w.K * BITS / 8;
  const int blocks_per_group = w.group_size / kBlock;
  // Per row b: the activation scales of each block pair, and the exact sums of each group's activations.
  thread_local std::vector<float> dv;  // [B][pairs][16]
  thread_local std::vector<float> gsum;
  dv.resize((size_t)B * pairs * 16);
  gsum.assign((size_t)B * groups + 16, 0.f);
  for (int b = 0; b < B; ++b) {
    const float* d = x.d + (size_t)b * nb;
    for (int p = 0; p < pairs; ++p) _mm512_storeu_ps(&dv[((size_t)b * pairs + p) * 16], pair(d[2 * p], d[2 * p + 1]));
    for (int blk = 0; blk < nb; ++blk) gsum[(size_t)b * groups + blk / blocks_per_group] += x.sum[(size_t)b * nb + blk];
  }
  const __m512i zero = _mm512_setzero_si512();
  for (int n = n0; n < n1; ++n) {
    const uint8_t* row = w.w + (size_t)n * row_bytes;
    const size_t g0 = (size_t)n * groups;
    __m512 acc[B];
    for (int b = 0; b < B; ++b) acc[b] = _mm512_setzero_ps();
    for (int p = 0; p < pairs; ++p) {
      const int blk = 2 * p;
      const __m512i wv = load_pair<BITS>(row, blk);
      const __m512 sv = pair(param(w.scales, g0 + blk / blocks_per_group, F16),
                             param(w.scales, g0 + (blk + 1) / blocks_per_group, F16));
      for (int b = 0; b < B; ++b) {
        const __m512i xv = _mm512_loadu_si512(x.q + (size_t)b * w.K + blk * kBlock);
        const __m512 dot = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(zero, wv, xv));
        acc[b] = _mm512_fmadd_ps(dot, _mm512_mul_ps(sv, _mm512_loadu_ps(&dv[((size_t)b * pairs + p) * 16])), acc[b]);
      }
    }
    if (nb % 2) {
      const int blk = nb - 1;
      const __m256i wv = load_block<BITS>(row, blk);
      const float s = param(w.scales, g0 + blk / blocks_per_group, F16);
      for (int b = 0; b < B; ++b) {
        const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.q + (size_t)b * w.K + blk * kBlock));
        const __m256 dot = _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(_mm256_setzero_si256(), wv, xv));
        const __m256 part = _mm256_mul_ps(dot, _mm256_set1_ps(s * x.d[(size_t)b * nb + blk]));
        acc[b] = _mm512_add_ps(acc[b], _mm512_zextps256_ps512(part));
      }
    }
    for (int g = 0; g < groups; g += 16) {
      const int count = groups - g < 16 ? groups - g : 16;
      const __m512 bias = params16(w.biases, g0 + g, count, F16);
      for (int b = 0; b < B; ++b) acc[b] = _mm512_fmadd_ps(bias, _mm512_loadu_ps(&gsum[(size_t)b * groups + g]), acc[b]);
    }
    for (int b = 0; b < B; ++b) y[(size_t)b * w.N + n] = _mm512_reduce_add_ps(acc[b]);
  }
}

template <int B>
void rows_b(const QWeights& w, const QuantX& x, float* y, int n0, int n1) {
  if (w.bits == 4) {
    w.f16 ? rows_t<B, 4, true>(w, x, y, n0, n1) : rows_t<B, 4, false>(w, x, y, n0, n1);
  } else {
    w.f16 ? rows_t<B, 8, true>(w, x, y, n0, n1) : rows_t<B, 8, false>(w, x, y, n0, n1);
  }
}

} // namespace wide

void rows_avx512vnni(const QWeights& w, const QuantX& x, int B, float* y, int n0, int n1) {
  if (B <= kRowsOn256) return rows_vnni256(w, x, B, y, n0, n1);
  switch (B) {
    case 1: return wide::rows_b<1>(w, x, y, n0, n1);
    case 2: return wide::rows_b<2>(w, x, y, n0, n1);
    case 3: return wide::rows_b<3>(w, x, y, n0, n1);
    case 4: return wide::rows_b<4>(w, x, y, n0, n1);
    case 5: return wide::rows_b<5>(w, x, y, n0, n1);
    case 6: return wide::rows_b<6>(w, x, y, n0, n1);
    case 7: return wide::rows_b<7>(w, x, y, n0, n1);
    default: return wide::rows_b<8>(w, x, y, n0, n1);
  }
}

} // namespace exo
