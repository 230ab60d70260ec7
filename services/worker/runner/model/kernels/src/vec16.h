// Sixteen floats (or int32s) as one value, with GCC's and clang's vector extension: one AVX-512 register, or two or
// four narrower ones, in whichever target_clones clone of a function uses them. Loads need no alignment.
// Only for the float loops around the matrix products (attention, the activations' quantizer, logsumexp);
// the products themselves have their own intrinsics per ISA.
#pragma once

#include <cstdint>
#include <cstring>

// A function built for AVX-512, AVX2 and any x86-64 CPU, picked at load time (GCC on x86-64; elsewhere one build).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define EXO_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define EXO_CLONES
#endif

#define EXO_VEC_INLINE [[gnu::always_inline]] inline

namespace exo::vec {

typedef float f16x __attribute__((vector_size(64), aligned(4)));
typedef int32_t i16x __attribute__((vector_size(64), aligned(4)));
typedef int8_t b16x __attribute__((vector_size(16), aligned(1)));

EXO_VEC_INLINE f16x load(const float* p) { return *reinterpret_cast<const f16x*>(p); }

// Halving sums and maxima: the same order in every clone and every caller.
EXO_VEC_INLINE float sum(f16x v) {
  float l[16];
  std::memcpy(l, &v, sizeof l);
  for (int w = 8; w >= 1; w /= 2)
    for (int j = 0; j < w; ++j) l[j] += l[j + w];
  return l[0];
}

// sum(a[k]) for each of 16 vectors, as lane k of one vector, each bit for bit what sum(a[k]) gives: the same
// halving adds (lane j plus lane j + w), done for several vectors at once by pairing their halves with shuffles.
EXO_VEC_INLINE f16x sums(const f16x (&a)[16]) {
  const i16x lo8 = {0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23};
  const i16x hi8 = {8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31};
  const i16x lo4 = {0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27};
  const i16x hi4 = {4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31};
  const i16x lo2 = {0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29};
  const i16x hi2 = {2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31};
  const i16x lo1 = {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30};
  const i16x hi1 = {1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31};
  f16x p[8], q[4], r[2];
  for (int k = 0; k < 8; ++k) p[k] = __builtin_shuffle(a[2 * k], a[2 * k + 1], lo8) + __builtin_shuffle(a[2 * k], a[2 * k + 1], hi8);
  for (int k = 0; k < 4; ++k) q[k] = __builtin_shuffle(p[2 * k], p[2 * k + 1], lo4) + __builtin_shuffle(p[2 * k], p[2 * k + 1], hi4);
  for (int k = 0; k < 2; ++k) r[k] = __builtin_shuffle(q[2 * k], q[2 * k + 1], lo2) + __builtin_shuffle(q[2 * k], q[2 * k + 1], hi2);
  return __builtin_shuffle(r[0], r[1], lo1) + __builtin_shuffle(r[0], r[1], hi1);
}

EXO_VEC_INLINE float max(f16x v) {
  float l[16];
  std::memcpy(l, &v, sizeof l);
  for (int w = 8; w >= 1; w /= 2)
    for (int j = 0; j < w; ++j) l[j] = l[j] > l[j + w] ? l[j] : l[j + w];
  return l[0];
}

// Round to the nearest integer, ties to even (lrintf's default mode), for |v| <= 2^22: adding and taking away
// 1.5 * 2^23 leaves no fraction bits.
EXO_VEC_INLINE f16x round_even(f16x v) {
  const float magic = 12582912.f;
  return (v + magic) - magic;
}

// e^x to within ~2 ulp of expf (Cephes' expf: x = n ln2 + r, |r| <= ln2 / 2, a degree-6 polynomial in r, times
// 2^n built in the exponent bits). 0 below ln(FLT_MIN) (-87.34; expf gives subnormals there), e^88 above 88.
EXO_VEC_INLINE f16x exp(f16x x) {
  const f16x lo = f16x{} - 87.33654f, hi = f16x{} + 88.f;
  const f16x zero = {};
  const f16x xc = x < lo ? lo : (x > hi ? hi : x);  // NaN stays NaN: both comparisons are false
  const f16x n = round_even(xc * 1.44269504088896341f);
  f16x r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  f16x p = r * 1.9875691500e-4f + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.f;
  const i16x bits = (__builtin_convertvector(n, i16x) + 127) << 23;
  f16x scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return x < lo ? zero : p * scale;
}

} // namespace exo::vec
