// AVX-512 VNNI on 256-bit vectors (AVX512VL): vpdpbusd sums four u8 x s8 products straight into int32, for
// 4-bit and 8-bit weights alike. 256 bits keep one block per instruction (a block has its own scale).
#include <immintrin.h>

static inline __m256i exo_dot_vnni(__m256i w, __m256i x) {
  return _mm256_dpbusd_epi32(_mm256_setzero_si256(), w, x);
}

#define EXO_DOT4 exo_dot_vnni
#define EXO_DOT8 exo_dot_vnni
#define EXO_ROWS_FN rows_avx512vnni
#include "qmv_simd.inc"
