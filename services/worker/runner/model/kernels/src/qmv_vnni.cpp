// AVX-512 VNNI: vpdpbusd sums four u8 x s8 products straight into int32, for 4-bit and 8-bit weights alike.
//
// 1-3 activation rows (decode): one block of 32 weights per 256-bit vpdpbusd, four weight rows at a time so that
// each activation block is loaded once for four rows and the four accumulators are independent chains. Before a
// group of weight rows, each row's scales are multiplied by the activation block scales once, vectorized, so the
// inner loop per block is a load and unpack, a vpdpbusd, a convert and an FMA with a broadcast from memory; the
// bias term (bias * the activation group's exact sum) is one vectorized dot product per row after the blocks.
//
// 4-8 rows: two blocks of 32 weights go through one 512-bit instruction (16 int32 lanes: 8 per block), and each
// lane is scaled by its block's weight scale times the activation block's scale: the activation scales of every row
// are laid out once per call as 512-bit vectors (d of block j in lanes 0-7, of block j+1 in lanes 8-15), so the
// inner loop per row and block pair is a load, a vpdpbusd, a convert, a multiply and an FMA. The bias term is a dot
// product over the groups, taken 16 groups at a time after the blocks. An odd last block goes through the 256-bit
// form.
//
// From 2 rows, whole tiles of 16 weight rows go through the tile form (namespace tile), one weight row per lane.
#include <immintrin.h>

#include <vector>

#include "qmv_kernels.h"

namespace exo {

inline float param(const void* p, size_t i, bool f16) {
  return f16 ? _cvtsh_ss(static_cast<const uint16_t*>(p)[i]) : static_cast<const float*>(p)[i];
}

// `count` (1..16) consecutive scales or biases from index i as floats, the rest of the lanes zero.
inline __m512 params16(const void* p, size_t i, int count, bool f16) {
  const __mmask16 m = (__mmask16)((1u << count) - 1);
  if (f16) return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, static_cast<const uint16_t*>(p) + i));
  return _mm512_maskz_loadu_ps(m, static_cast<const float*>(p) + i);
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

// Weights are read once per call, from memory: the hardware prefetcher alone leaves the kernel waiting on them
// (measured, weights not in cache, one row: 1536x576 q4 88 -> 54-60 us and the 49152x576 q8 head 4.7 -> 3.1-3.3 ms
// with a software prefetch 3-6 KB ahead; 4 KB taken).
constexpr size_t kPrefetchBytes = 4096;
template <int BITS>
constexpr int kBlockBytes = BITS * kBlock / 8;

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

namespace narrow {

// Scale products of weight row n for activation row b: out[blk] = scale(n, group of blk) * d[b][blk], 16 blocks at
// a time (a group's scale is spread over its blocks by a permute).
template <bool F16>
inline void scale_products(const QWeights& w, const QuantX& x, int n, int b, float* out) {
  const int nb = w.K / kBlock, groups = w.K / w.group_size, bpg = w.group_size / kBlock;
  const int shift = bpg == 1 ? 0 : bpg == 2 ? 1 : 2;  // group sizes 32, 64, 128
  const __m512i spread = _mm512_srl_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                          _mm_cvtsi32_si128(shift));
  const size_t g0 = (size_t)n * groups;
  const float* d = x.d + (size_t)b * nb;
  for (int j = 0; j < nb; j += 16) {
    const int count = nb - j < 16 ? nb - j : 16, gcount = (count + bpg - 1) / bpg;
    const __m512 s = _mm512_permutexvar_ps(spread, params16(w.scales, g0 + j / bpg, gcount, F16));
    const __mmask16 m = (__mmask16)((1u << count) - 1);
    _mm512_mask_storeu_ps(out + j, m, _mm512_mul_ps(s, _mm512_maskz_loadu_ps(m, d + j)));
  }
}

template <int R, int B, int BITS, bool F16>
void rows_t(const QWeights& w, const QuantX& x, float* y, int n0, int n1) {
  const int nb = w.K / kBlock, groups = w.K / w.group_size, row_bytes = w.K * BITS / 8;
  const int bpg = w.group_size / kBlock, stride = nb + 16;
  // Thread-local scratch, used through plain pointers: in a shared library each access to a thread_local goes
  // through __tls_get_addr, which the compiler does not hoist out of the inner loop (measured: 1.5x slower).
  thread_local std::vector<float> gsum_buf, sd_buf;  // [B][groups] exact activation sums per group; [R][B][stride]
  gsum_buf.assign((size_t)B * groups + 16, 0.f);
  sd_buf.resize((size_t)R * B * stride);
  float* const gsum = gsum_buf.data();
  float* const sd = sd_buf.data();
  add_group_sums(x, B, nb, groups, bpg, gsum);
  int n = n0;
  for (; n + R <= n1; n += R) {
    for (int r = 0; r < R; ++r) {
      for (int b = 0; b < B; ++b) scale_products<F16>(w, x, n + r, b, &sd[((size_t)r * B + b) * stride]);
    }
    __m256 acc[R][B];
    for (int r = 0; r < R; ++r) {
      for (int b = 0; b < B; ++b) acc[r][b] = _mm256_setzero_ps();
    }
    const uint8_t* row = w.w + (size_t)n * row_bytes;
    for (int blk = 0; blk < nb; ++blk) {
      // The R rows are one contiguous stretch: fetch the same share of the stretch kPrefetchBytes ahead.
      const uint8_t* ahead = row + kPrefetchBytes + (size_t)blk * kBlockBytes<BITS> * R;
      for (int l = 0; l < kBlockBytes<BITS> * R; l += 64) _mm_prefetch(reinterpret_cast<const char*>(ahead + l), _MM_HINT_T0);
      __m256i xv[B];
      for (int b = 0; b < B; ++b) {
        xv[b] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.q + (size_t)b * w.K + blk * kBlock));
      }
      for (int r = 0; r < R; ++r) {
        const __m256i wv = load_block<BITS>(row + (size_t)r * row_bytes, blk);
        for (int b = 0; b < B; ++b) {
          const __m256 dot = _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(_mm256_setzero_si256(), wv, xv[b]));
          acc[r][b] = _mm256_fmadd_ps(dot, _mm256_broadcast_ss(&sd[((size_t)r * B + b) * stride + blk]), acc[r][b]);
        }
      }
    }
    for (int r = 0; r < R; ++r) {
      const size_t g0 = (size_t)(n + r) * groups;
      for (int b = 0; b < B; ++b) {
        __m512 total = _mm512_zextps256_ps512(acc[r][b]);
        for (int g = 0; g < groups; g += 16) {
          const __m512 bias = params16(w.biases, g0 + g, groups - g < 16 ? groups - g : 16, F16);
          total = _mm512_fmadd_ps(bias, _mm512_loadu_ps(&gsum[(size_t)b * groups + g]), total);
        }
        y[(size_t)b * w.N + n + r] = _mm512_reduce_add_ps(total);
      }
    }
  }
  if constexpr (R > 1) {
    if (n < n1) rows_t<1, B, BITS, F16>(w, x, y, n, n1);
  }
}

template <int R, int B>
void rows_b(const QWeights& w, const QuantX& x, float* y, int n0, int n1) {
  by_format(w, [&]<int BITS, bool F16>() { rows_t<R, B, BITS, F16>(w, x, y, n0, n1); });
}

} // namespace narrow

namespace wide {

inline __m512 pair(float lo, float hi) {
  const __m512d low = _mm512_castps_pd(_mm512_castps256_ps512(_mm256_set1_ps(lo)));  // AVX-512F only (no DQ)
  return _mm512_castpd_ps(_mm512_insertf64x4(low, _mm256_castps_pd(_mm256_set1_ps(hi)), 1));
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
  // Through plain pointers, as in the narrow form (a thread_local's every access is a call in a shared library).
  thread_local std::vector<float> dv_buf;  // [B][pairs][16]
  thread_local std::vector<float> gsum_buf;
  dv_buf.resize((size_t)B * pairs * 16);
  gsum_buf.assign((size_t)B * groups + 16, 0.f);
  float* const dv = dv_buf.data();
  float* const gsum = gsum_buf.data();
  for (int b = 0; b < B; ++b) {
    const float* d = x.d + (size_t)b * nb;
    for (int p = 0; p < pairs; ++p) _mm512_storeu_ps(&dv[((size_t)b * pairs + p) * 16], pair(d[2 * p], d[2 * p + 1]));
  }
  add_group_sums(x, B, nb, groups, blocks_per_group, gsum);
  const __m512i zero = _mm512_setzero_si512();
  for (int n = n0; n < n1; ++n) {
    const uint8_t* row = w.w + (size_t)n * row_bytes;
    const size_t g0 = (size_t)n * groups;
    __m512 acc[B];
    for (int b = 0; b < B; ++b) acc[b] = _mm512_setzero_ps();
    for (int p = 0; p < pairs; ++p) {
      const int blk = 2 * p;
      _mm_prefetch(reinterpret_cast<const char*>(row + kPrefetchBytes + (size_t)blk * kBlockBytes<BITS>), _MM_HINT_T0);
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
  by_format(w, [&]<int BITS, bool F16>() { rows_t<B, BITS, F16>(w, x, y, n0, n1); });
}

} // namespace wide

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

template <int B>
void rows_b(const QWeights& w, const QuantX& x, float* y, int n0, int n1) {
  by_format(w, [&]<int BITS, bool F16>() { rows_t<B, BITS, F16>(w, x, y, n0, n1); });
}

} // namespace tile

void rows_avx512vnni(const QWeights& w, const QuantX& x, int B, float* y, int n0, int n1) {
  // 1 row: the narrow form (the tile form measured 3-5% faster there since its scales are gathered, but its float
  // sums run in another order, and the tests' 128 greedy tokens against MLX's q4 path then part at a near-tie; kept).
  // From 2 rows the tile form, whole tiles of 16 rows, the rest through the older forms (measured over every matrix of
  // SmolLM2-135M q4, one thread: 2 rows 15.0 -> 10.9 ms, 4 rows 16.1 -> 13.0 ms, 8 rows 26.3 -> 17.2 ms; with the
  // gathered scales 2 rows ~10.1, 8 rows 15.0-16.5).
  int nt = n0;
  if (B >= 2) {
    nt = n0 + (n1 - n0) / tile::kRows * tile::kRows;
    switch (B) {
      case 2: tile::rows_b<2>(w, x, y, n0, nt); break;
      case 3: tile::rows_b<3>(w, x, y, n0, nt); break;
      case 4: tile::rows_b<4>(w, x, y, n0, nt); break;
      case 5: tile::rows_b<5>(w, x, y, n0, nt); break;
      case 6: tile::rows_b<6>(w, x, y, n0, nt); break;
      case 7: tile::rows_b<7>(w, x, y, n0, nt); break;
      default: tile::rows_b<8>(w, x, y, n0, nt); break;
    }
    if (nt == n1) return;
    n0 = nt;
  }
  switch (B) {  // the older forms: 1-3 rows narrow, 4-8 wide (8 rows: 15-20% faster than narrow)
    case 1: return narrow::rows_b<4, 1>(w, x, y, n0, n1);
    case 2: return narrow::rows_b<4, 2>(w, x, y, n0, n1);
    case 3: return narrow::rows_b<2, 3>(w, x, y, n0, n1);
    case 4: return wide::rows_b<4>(w, x, y, n0, n1);
    case 5: return wide::rows_b<5>(w, x, y, n0, n1);
    case 6: return wide::rows_b<6>(w, x, y, n0, n1);
    case 7: return wide::rows_b<7>(w, x, y, n0, n1);
    default: return wide::rows_b<8>(w, x, y, n0, n1);
  }
}

} // namespace exo
