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

// GELU with erf, 0.5 x (1 + erf(x / sqrt 2)). erf(z) = z P(z^2) / Q(z^2) on z in [-4, 4]: a
// rational minimax fit of degree 6 over 4 in z^2 (absolute error 5.5e-8 in exact arithmetic,
// below 4.2e-7 evaluated in float32, where erfc by Abramowitz & Stegun 7.1.26 through e^(-z^2)
// reached 6.1e-7), and +-1 beyond (1 - erf(4) < 1.6e-8). Half the instructions of the erfc form
// (no exponential, one reciprocal): the GELU is most of the INT8 up projection's epilogue (with
// this form still 40% of its time at 1024 rows, 90% 32x32 blocks, on Zen 4: bench_linear --suite
// int8). NaN stays NaN (through the 0.5 x factor).
template <class V>
inline V vgelu(V x) {
  const V four = vsplat<V>(4.f), minus_four = vsplat<V>(-4.f);
  V z = x * 0.707106781186547524f;
  z = z < four ? z : four;
  z = z > minus_four ? z : minus_four;
  const V u = z * z;
  V p = vsplat<V>(1.9216320028675114e-08f);
  p = p * u - 1.9904220204443542e-06f;
  p = p * u + 1.5556615753943697e-04f;
  p = p * u + 4.2942955545138047e-03f;
  p = p * u + 5.2437514523756043e-02f;
  p = p * u + 2.1397327803458421e-01f;
  p = p * u + 1.1283786785418783f;
  V q = vsplat<V>(1.0983360723259800e-03f);
  q = q * u + 1.5553661716008270e-02f;
  q = q * u + 1.2081164131457464e-01f;
  q = q * u + 5.2295654552272790e-01f;
  q = q * u + 1.f;
  const V erf = z * p * vrecip(q);
  const V h = 0.5f * x;
  return h + h * erf;
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
