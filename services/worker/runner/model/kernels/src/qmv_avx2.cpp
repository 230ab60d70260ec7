// AVX2 + FMA + F16C. 4-bit: maddubs (u8 x s8 pairs into int16: 15 * 127 * 2 cannot saturate). 8-bit: bytes
// widened to int16 first, since 255 * 127 * 2 would saturate maddubs.
#include <immintrin.h>

static inline __m256i exo_dot4_avx2(__m256i w, __m256i x) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), _mm256_set1_epi16(1));
}

static inline __m256i exo_dot8_avx2(__m256i w, __m256i x) {
  const __m256i wl = _mm256_cvtepu8_epi16(_mm256_castsi256_si128(w));
  const __m256i wh = _mm256_cvtepu8_epi16(_mm256_extracti128_si256(w, 1));
  const __m256i xl = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(x));
  const __m256i xh = _mm256_cvtepi8_epi16(_mm256_extracti128_si256(x, 1));
  return _mm256_add_epi32(_mm256_madd_epi16(wl, xl), _mm256_madd_epi16(wh, xh));
}

#define EXO_DOT4 exo_dot4_avx2
#define EXO_DOT8 exo_dot8_avx2
#define EXO_ROWS_FN rows_avx2
#include "qmv_simd.inc"
