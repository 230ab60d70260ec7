// AVX-512 VNNI: vpdpbusd sums four u8 x s8 products straight into int32, for 4-bit and 8-bit weights alike.
//
// Every row count (1-8 activation rows) goes through the tile form (namespace tile): 16 weight rows at a time, one
// per lane, the rows of a matrix past its last whole tile one at a time in the same order of float operations. So a
// row's value is the same whatever else its call holds (the batch) and wherever the threads' ranges fall.
#include <immintrin.h>

#include <cmath>
#include <vector>

#include "qmv_kernels.h"

namespace exo {

inline float param(const void* p, size_t i, bool f16) {
  return f16 ? _cvtsh_ss(static_cast<const uint16_t*>(p)[i]) : static_cast<const float*>(p)[i];
}

// Weights are read once per call, from memory: the hardware prefetcher alone leaves the kernel waiting on them
// (measured, weights not in cache, one row: 1536x576 q4 88 -> 54-60 us and the 49152x576 q8 head 4.7 -> 3.1-3.3 ms
// with a software prefetch 3-6 KB ahead; 4 KB taken).
constexpr size_t kPrefetchBytes = 4096;

// Runs f.template operator()<BITS, F16>() for w's bits and scale type: each form's kernel is compiled per format.
template <class F>
inline void by_format(const QWeights& w, F&& f) {
  if (w.bits == 4) {
    w.f16 ? f.template operator()<4, true>() : f.template operator()<4, false>();
  } else {
    w.f16 ? f.template operator()<8, true>() : f.template operator()<8, false>();
  }
}

// gsum[b * groups + g] += the exact sum of activation row b's group g (the bias term's factor), for B rows.
inline void add_group_sums(const QuantX& x, int B, int nb, int groups, int blocks_per_group, float* gsum) {
  for (int b = 0; b < B; ++b) {
    for (int blk = 0; blk < nb; ++blk) gsum[(size_t)b * groups + blk / blocks_per_group] += x.sum[(size_t)b * nb + blk];
  }
}

namespace tile {

// 16 weight rows at a time, one row per int32 lane: the activations' four bytes at a time are broadcast
// (vpdpbusd's {1to16} form), so one convert, multiply and FMA per block serve 16 rows instead of one, and the
// weight vectors, built once per block, serve every activation row. MLX's row-major layout stays as it is: a
// block's 16 bytes (or 32, 8-bit) of four rows go into the four 128-bit lanes of a vector, and an in-lane 4x4
// transpose of four such vectors gives vectors whose lane 4l+q holds row 4q+l's four bytes (lane_row).
constexpr int kRows = 16;
inline int lane_row(int lane) { return (lane % 4) * 4 + lane / 4; }  // its own inverse

inline __m512i lanes4(const uint8_t* p, size_t row_bytes) {
  const __m512i v = _mm512_castsi128_si512(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  const __m512i v1 = _mm512_inserti32x4(v, _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + row_bytes)), 1);
  const __m512i v2 = _mm512_inserti32x4(v1, _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 2 * row_bytes)), 2);
  return _mm512_inserti32x4(v2, _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 3 * row_bytes)), 3);
}

// out[c]: the c-th four bytes at p of the 16 rows from p on, in lane order.
inline void transposed(const uint8_t* p, size_t row_bytes, __m512i out[4]) {
  const __m512i a0 = lanes4(p, row_bytes), a1 = lanes4(p + 4 * row_bytes, row_bytes);
  const __m512i a2 = lanes4(p + 8 * row_bytes, row_bytes), a3 = lanes4(p + 12 * row_bytes, row_bytes);
  const __m512i t0 = _mm512_unpacklo_epi32(a0, a1), t1 = _mm512_unpackhi_epi32(a0, a1);
  const __m512i t2 = _mm512_unpacklo_epi32(a2, a3), t3 = _mm512_unpackhi_epi32(a2, a3);
  out[0] = _mm512_unpacklo_epi64(t0, t2);
  out[1] = _mm512_unpackhi_epi64(t0, t2);
  out[2] = _mm512_unpacklo_epi64(t1, t3);
  out[3] = _mm512_unpackhi_epi64(t1, t3);
}

// Block blk of 16 rows as 8 vectors; vector k pairs with the activations' k-th four bytes of the block.
template <int BITS>
inline void load_block16(const uint8_t* rows, size_t row_bytes, int blk, __m512i wv[8]) {
  if constexpr (BITS == 4) {  // the low nibbles are the block's first 16 activations in their order, the high ones the rest
    __m512i t[4];
    transposed(rows + (size_t)blk * 16, row_bytes, t);
    const __m512i nib = _mm512_set1_epi8(0x0F);
    for (int c = 0; c < 4; ++c) {
      wv[c] = _mm512_and_si512(t[c], nib);
      wv[4 + c] = _mm512_and_si512(_mm512_srli_epi16(t[c], 4), nib);
    }
  } else {
    transposed(rows + (size_t)blk * kBlock, row_bytes, wv);
    transposed(rows + (size_t)blk * kBlock + 16, row_bytes, wv + 4);
  }
}

// Values p[first + at[lane]] as floats (scales or biases, float32 or float16).
template <bool F16>
inline __m512 gathered(const void* p, size_t first, __m512i at) {
  if constexpr (F16) {  // 4 bytes at each value's address, of which the low 2 are the value
    return _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_i32gather_epi32(at, static_cast<const uint16_t*>(p) + first, 2)));
  } else {
    return _mm512_i32gather_ps(at, static_cast<const float*>(p) + first, 4);
  }
}

template <int B, int BITS, bool F16>
void rows_t(const QWeights& w, const QuantX& x, float* y, int n0, int n1) {
  const int nb = w.K / kBlock, groups = w.K / w.group_size, bpg = w.group_size / kBlock;
  const size_t row_bytes = (size_t)w.K * BITS / 8, tile_bytes = kRows * row_bytes;
  // Per tile, the scales and biases of its 16 rows by group, in lane order, gathered a group at a time (a scalar
  // copy per tile was ~30% of the tile's time at 8 rows); per activation row, the exact sum of each group. Through
  // plain pointers, as in the other forms.
  thread_local std::vector<float> sb_buf, gsum_buf;
  sb_buf.resize((size_t)2 * groups * kRows);
  gsum_buf.assign((size_t)B * groups, 0.f);
  float* const sv = sb_buf.data();
  float* const bv = sv + (size_t)groups * kRows;
  float* const gsum = gsum_buf.data();
  add_group_sums(x, B, nb, groups, bpg, gsum);
  const __m512i order = _mm512_set_epi32(15, 11, 7, 3, 14, 10, 6, 2, 13, 9, 5, 1, 12, 8, 4, 0);  // lane_row
  const __m512i lane_groups = _mm512_mullo_epi32(order, _mm512_set1_epi32(groups));  // lane -> its row's group 0
  for (int n = n0; n + kRows <= n1; n += kRows) {
    // A float16 gather reads 4 bytes at each value: the matrix's last tile copies its values instead, so as not to
    // read past the array's end.
    const bool copied = F16 && n + kRows >= w.N;
    if (copied) {
      for (int lane = 0; lane < kRows; ++lane) {
        const size_t g0 = (size_t)(n + lane_row(lane)) * groups;
        for (int g = 0; g < groups; ++g) {
          sv[(size_t)g * kRows + lane] = param(w.scales, g0 + g, F16);
          bv[(size_t)g * kRows + lane] = param(w.biases, g0 + g, F16);
        }
      }
    }
    const size_t first_value = (size_t)n * groups;
    const uint8_t* rows = w.w + (size_t)n * row_bytes;
    const uint8_t* next = rows + tile_bytes;  // the next tile, fetched a block's share at a time
    const size_t share = tile_bytes / nb;
    __m512 acc[B];
    for (int b = 0; b < B; ++b) acc[b] = _mm512_setzero_ps();
    for (int g = 0; g < groups; ++g) {
      __m512 bias, scale;
      if (copied) {
        bias = _mm512_loadu_ps(bv + (size_t)g * kRows), scale = _mm512_loadu_ps(sv + (size_t)g * kRows);
      } else {
        const __m512i at = _mm512_add_epi32(lane_groups, _mm512_set1_epi32(g));
        bias = gathered<F16>(w.biases, first_value, at), scale = gathered<F16>(w.scales, first_value, at);
      }
      for (int b = 0; b < B; ++b) acc[b] = _mm512_fmadd_ps(bias, _mm512_set1_ps(gsum[(size_t)b * groups + g]), acc[b]);
      for (int blk = g * bpg; blk < (g + 1) * bpg; ++blk) {
        for (size_t l = 0; l < share; l += 64) _mm_prefetch(reinterpret_cast<const char*>(next + blk * share + l), _MM_HINT_T0);
        __m512i wv[8];
        load_block16<BITS>(rows, row_bytes, blk, wv);
        for (int b = 0; b < B; ++b) {
          const int32_t* xi = reinterpret_cast<const int32_t*>(x.q + (size_t)b * w.K + blk * kBlock);
          __m512i even = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wv[0], _mm512_set1_epi32(xi[0]));
          __m512i odd = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wv[1], _mm512_set1_epi32(xi[1]));
          for (int k = 2; k < 8; k += 2) {
            even = _mm512_dpbusd_epi32(even, wv[k], _mm512_set1_epi32(xi[k]));
            odd = _mm512_dpbusd_epi32(odd, wv[k + 1], _mm512_set1_epi32(xi[k + 1]));
          }
          const __m512 dot = _mm512_cvtepi32_ps(_mm512_add_epi32(even, odd));
          acc[b] = _mm512_fmadd_ps(dot, _mm512_mul_ps(scale, _mm512_set1_ps(x.d[(size_t)b * nb + blk])), acc[b]);
        }
      }
    }
    for (int b = 0; b < B; ++b) _mm512_storeu_ps(y + (size_t)b * w.N + n, _mm512_permutexvar_ps(order, acc[b]));
  }
}

// Rows [n0, n1) one at a time, each in the tile form's order of float operations (per group: the bias term's FMA,
// then per block the scale's product and its FMA; the integer dot products are exact in any order), so that a
// matrix whose rows are not a multiple of 16, or a thread's range that ends inside a tile, gives every row the
// tile form's value.
template <int BITS, bool F16>
void rows_exact(const QWeights& w, const QuantX& x, int B, float* y, int n0, int n1) {
  const int nb = w.K / kBlock, groups = w.K / w.group_size, bpg = w.group_size / kBlock;
  const size_t row_bytes = (size_t)w.K * BITS / 8;
  std::vector<float> gsum((size_t)B * groups, 0.f);
  add_group_sums(x, B, nb, groups, bpg, gsum.data());
  for (int n = n0; n < n1; ++n) {
    const uint8_t* row = w.w + (size_t)n * row_bytes;
    for (int b = 0; b < B; ++b) {
      const int8_t* xq = x.q + (size_t)b * w.K;
      float acc = 0.f;
      for (int g = 0; g < groups; ++g) {
        const size_t gi = (size_t)n * groups + g;
        const float scale = param(w.scales, gi, F16);
        acc = std::fma(param(w.biases, gi, F16), gsum[(size_t)b * groups + g], acc);
        for (int blk = g * bpg; blk < (g + 1) * bpg; ++blk) {
          int32_t dot = 0;
          const int8_t* xb = xq + blk * kBlock;
          if constexpr (BITS == 4) {  // the low nibbles pair with the block's first 16 activations (their order)
            const uint8_t* wb = row + (size_t)blk * 16;
            for (int i = 0; i < 16; ++i) dot += (wb[i] & 0x0F) * xb[i] + (wb[i] >> 4) * xb[16 + i];
          } else {
            const uint8_t* wb = row + (size_t)blk * kBlock;
            for (int i = 0; i < kBlock; ++i) dot += wb[i] * xb[i];
          }
          acc = std::fma((float)dot, scale * x.d[(size_t)b * nb + blk], acc);
        }
      }
      y[(size_t)b * w.N + n] = acc;
    }
  }
}

template <int B>
void rows_b(const QWeights& w, const QuantX& x, float* y, int n0, int n1) {
  by_format(w, [&]<int BITS, bool F16>() { rows_t<B, BITS, F16>(w, x, y, n0, n1); });
}

} // namespace tile

void rows_avx512vnni(const QWeights& w, const QuantX& x, int B, float* y, int n0, int n1) {
  // Every row count through the tile form, whole tiles of 16 weight rows, the rest one row at a time in its order:
  // a row's value does not depend on how many rows the call has, which rows share its call (a batch), or where the
  // threads' ranges end, so a request's tokens are the same alone, in a batch, verified with a draft's tokens or
  // split over ranks. (Measured over every matrix of SmolLM2-135M q4, one thread: 1 row 3-5% faster than the
  // narrow form this replaced, whose 256-bit sums ran in another order; 2 rows 15.0 -> 10.9 ms, 8 rows 26.3 ->
  // 15.0-17.2 ms against the narrow and wide forms.)
  const int nt = n0 + (n1 - n0) / tile::kRows * tile::kRows;
  switch (B) {
    case 1: tile::rows_b<1>(w, x, y, n0, nt); break;
    case 2: tile::rows_b<2>(w, x, y, n0, nt); break;
    case 3: tile::rows_b<3>(w, x, y, n0, nt); break;
    case 4: tile::rows_b<4>(w, x, y, n0, nt); break;
    case 5: tile::rows_b<5>(w, x, y, n0, nt); break;
    case 6: tile::rows_b<6>(w, x, y, n0, nt); break;
    case 7: tile::rows_b<7>(w, x, y, n0, nt); break;
    default: tile::rows_b<8>(w, x, y, n0, nt); break;
  }
  if (nt < n1) by_format(w, [&]<int BITS, bool F16>() { tile::rows_exact<BITS, F16>(w, x, B, y, nt, n1); });
}

} // namespace exo
