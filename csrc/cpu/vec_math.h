// Vectorized float math shared by the attention kernels (softmax) and the linear kernels' GELU
// epilogue, written once over GCC vector extensions: V is any float vector type, a
// `vector_size` typedef or an intrinsic type such as __m256 / __m512 (which GCC defines the same
// way), and each ISA translation unit compiles it with its own -m flags.
//
// Include only from the ISA files: everything here has internal linkage.
#pragma once

#ifdef __AVX512F__
#include <immintrin.h>
#endif

namespace sparsebert {
namespace cpu {
namespace {

template <class V>
inline V vsplat(float s) {
  return s - V{};  // s - 0 folds to a broadcast; s + 0 would not (-0)
}

// 1 / d: on AVX-512, vrcp14ps and one Newton step (relative error about 2^-28, below float's) in
// place of a division, which costs several times more there.
template <class V>
inline V vrecip(V d) {
#ifdef __AVX512F__
  if constexpr (sizeof(V) == 64) {
    const V t = (V)_mm512_rcp14_ps((__m512)d);
    return t + t * (1.f - d * t);
  }
#endif
  return 1.f / d;
}

// e^x for x in [-86.5, 88.37] (no special values): Cephes' expf, n = round(x / ln 2), a degree-6
// polynomial of the remainder r, times 2^n. Within 2 ulp of expf; never a denormal there.
template <class V>
inline V vexp_core(V x) {
  using VI = decltype(x < x);  // the int32 vector of V's width
  const V round = vsplat<V>(12582912.0f);  // 1.5 * 2^23: adding and subtracting rounds to an integer
  const V n = (x * 1.44269504088896341f + round) - round;
  const V r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  V p = vsplat<V>(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  const VI bits = (__builtin_convertvector(n, VI) + 127) << 23;
  return p * (V)bits;
}

// e^x for any x: below -86.5 (-inf included) exactly 0, so that no intermediate is ever a
// denormal (each denormal result costs a microcode assist); above 88.37 e^88.37; NaN stays NaN.
template <class V>
inline V vexp(V x) {
  const V hi = vsplat<V>(88.3762626647949f), lo = vsplat<V>(-86.5f);
  V xc = x < hi ? x : hi;
  xc = xc > lo ? xc : lo;
  const V y = x < lo ? vsplat<V>(0.f) : vexp_core(xc);
  return x == x ? y : x;
}

// GELU with erf, 0.5 x (1 + erf(x / sqrt 2)). erf is Abramowitz & Stegun 7.1.26 (absolute error
// below 1.5e-7; the approximation of torch's own vectorized erf): with z = |x| / sqrt 2,
// q = t (a1 + t (a2 + ... + t a5)) e^(-z^2) = erfc(z), t = 1 / (1 + p z), and 1 + erf(x / sqrt 2)
// is q for x < 0 (no cancellation in the negative tail) and 2 - q otherwise. Past z = 9,
// erfc(z) < 5e-37: q is 0 there, and z is clamped so that nothing computes a denormal (they
// doubled the cost of the INT8 epilogue). NaN stays NaN.
template <class V>
inline V vgelu(V x) {
  using VI = decltype(x < x);
  const V zero = vsplat<V>(0.f), nine = vsplat<V>(9.f);
  const V za = (V)((VI)x & 0x7fffffff) * 0.707106781186547524f;  // |x| / sqrt 2
  const V z = za < nine ? za : nine;
  const V t = vrecip(z * 0.3275911f + 1.f);
  V poly = vsplat<V>(1.061405429f);
  poly = poly * t - 1.453152027f;
  poly = poly * t + 1.421413741f;
  poly = poly * t - 0.284496736f;
  poly = poly * t + 0.254829592f;
  V q = poly * t * vexp_core(-(z * z));  // -z^2 >= -81
  q = za > nine ? zero : q;
  return 0.5f * x * (x < zero ? q : 2.f - q);
}

#ifdef __AVX512F__
// e^x for x <= 0 (softmax scores minus their row max) on AVX-512, relative error below 2e-6: ample
// for attention probabilities rounded to bf16 (2^-9) right after, and cheaper than vexp (a
// degree-5 polynomial, vscalefps for the exponent, no overflow handling). Below -86.5 (-inf
// included) the result is exactly 0, never a denormal (denormal arithmetic costs a microcode
// assist per instruction). NaN stays NaN.
inline __m512 vexp_nonpositive(__m512 x) {
  const __m512 lo = _mm512_set1_ps(-86.5f);
  const __mmask16 keep = _mm512_cmp_ps_mask(x, lo, _CMP_NLT_UQ);  // x >= lo, or NaN
  x = _mm512_max_ps(lo, x);  // NaN passes (vmaxps returns its second operand)
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693147180559945f), x);
  __m512 p = _mm512_set1_ps(1.f / 120);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  return _mm512_maskz_scalef_ps(keep, p, n);
}
#endif

}  // namespace
}  // namespace cpu
}  // namespace sparsebert
