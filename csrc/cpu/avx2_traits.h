// AVX2 helpers shared by bsr_linear_avx2.cpp and bsr_int8_linear_avx2.cpp. Internal linkage:
// each file keeps its own copy, compiled with its own flags.
#pragma once

#include <immintrin.h>

#include "bsr_linear_impl.h"

namespace sparsebert {
namespace cpu {
namespace {

// AVX2 masks are vectors; the lane count is kept for the stores AVX2 cannot mask (16-bit).
struct Avx2Mask {
  __m256i v;
  int lanes;
};

inline Avx2Mask avx2_mask(int lanes) {
  const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return {_mm256_cmpgt_epi32(_mm256_set1_epi32(lanes), idx), lanes};
}

// e^x for x <= 0 (inputs below -87.3 give e^-87.3): Cephes' expf, n = round(x / ln 2), a degree-6
// polynomial of the remainder, scaled by 2^n (n >= -126: a normal exponent).
inline __m256 exp_nonpos_f32x8(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.3f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.3981999507e-3f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(8.3334519073e-3f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(4.1665795894e-2f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.6666665459e-1f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(5.0000001201e-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

// GELU with erf, 0.5 x (1 + erf(x / sqrt 2)), on 8 lanes. erf is Abramowitz & Stegun 7.1.26 (absolute
// error below 1.5e-7; the approximation of torch's own vectorized erf): with z = |x| / sqrt 2,
// q = t (a1 + t (a2 + ... + t a5)) e^(-z^2) = erfc(z), t = 1 / (1 + p z), and 1 + erf(x / sqrt 2)
// is q for x < 0 (no cancellation in the negative tail) and 2 - q otherwise.
inline __m256 gelu_f32x8(__m256 x) {
  const __m256 one = _mm256_set1_ps(1.f);
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const __m256 za = _mm256_mul_ps(_mm256_and_ps(x, abs_mask), _mm256_set1_ps(0.707106781186547524f));
  // Past z = 9, erfc(z) < 5e-37: q is 0 there, and z is clamped so that nothing below computes
  // a denormal (microcode assists).
  const __m256 keep = _mm256_cmp_ps(za, _mm256_set1_ps(9.f), _CMP_LE_OQ);
  const __m256 z = _mm256_min_ps(za, _mm256_set1_ps(9.f));
  const __m256 t = _mm256_div_ps(one, _mm256_fmadd_ps(z, _mm256_set1_ps(0.3275911f), one));
  __m256 poly = _mm256_set1_ps(1.061405429f);
  poly = _mm256_fmadd_ps(poly, t, _mm256_set1_ps(-1.453152027f));
  poly = _mm256_fmadd_ps(poly, t, _mm256_set1_ps(1.421413741f));
  poly = _mm256_fmadd_ps(poly, t, _mm256_set1_ps(-0.284496736f));
  poly = _mm256_fmadd_ps(poly, t, _mm256_set1_ps(0.254829592f));
  poly = _mm256_mul_ps(poly, t);
  const __m256 q = _mm256_and_ps(keep, _mm256_mul_ps(poly, exp_nonpos_f32x8(_mm256_mul_ps(_mm256_sub_ps(_mm256_setzero_ps(), z), z))));
  const __m256 neg = _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_LT_OQ);
  const __m256 one_plus_erf = _mm256_blendv_ps(_mm256_sub_ps(_mm256_set1_ps(2.f), q), q, neg);
  return _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.5f), x), one_plus_erf);
}

// What every AVX2 traits type shares: 8 lanes per vector and their masks.
struct Avx2Lanes {
  static constexpr int VL = 8;
  using mask_t = Avx2Mask;
  static mask_t mask(int lanes) { return avx2_mask(lanes); }
  static void stream_fence() {}  // no streaming stores here: stream_y is a hint they ignore
};

// Eight fp32 results stored as Y (float, or bf16 bits rounded like every other path).
template <class Y>
inline void store8(Y* p, __m256 v, const Avx2Mask& k) {
  if constexpr (sizeof(Y) == 4) {
    _mm256_maskstore_ps(reinterpret_cast<float*>(p), k.v, v);
  } else {
    alignas(32) float f[8];
    _mm256_store_ps(f, v);
    for (int i = 0; i < k.lanes && i < 8; ++i) p[i] = f32_to_bf16_bits(f[i]);
  }
}

}  // namespace
}  // namespace cpu
}  // namespace sparsebert
