// AVX-512 vector traits shared by bsr_linear_avx512.cpp and bsr_linear_avx512bf16.cpp.
// Internal linkage: each file keeps its own copy, compiled with its own flags.
#pragma once

#include <immintrin.h>

#include "bsr_linear_impl.h"
#include "vec_math.h"  // vgelu

namespace sparsebert {
namespace cpu {
namespace {

inline __mmask16 avx512_mask(int lanes) {
  if (lanes >= 16) return 0xffff;
  if (lanes <= 0) return 0;
  return static_cast<__mmask16>((1u << lanes) - 1u);
}

// What every AVX-512 traits type shares: 16 lanes per vector and their masks.
struct Avx512Lanes {
  static constexpr int VL = 16;
  using mask_t = __mmask16;
  static mask_t mask(int lanes) { return avx512_mask(lanes); }
  static void stream_fence() { _mm_sfence(); }
};

// fp32 -> bf16 with round-to-nearest-even and quiet NaN, 16 lanes: the vector form of
// f32_to_bf16_bits (vcvtneps2bf16 would flush denormals, which torch's rounding does not).
// stream: a whole, aligned vector goes out with a non-temporal store when the caller asked for
// one (y too large for the caches: BsrLinearArgs::stream_y); partial or unaligned ones do not.
inline void store_bf16x16(uint16_t* p, __m512 a, __mmask16 k, bool stream = false) {
  const __m512i u = _mm512_castps_si512(a);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
  const __mmask16 nan = _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q);
  r = _mm512_mask_or_epi32(r, nan, _mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
  const __m256i h = _mm512_cvtepi32_epi16(r);
  if (stream && k == 0xffff && (reinterpret_cast<uintptr_t>(p) & 31) == 0)
    _mm256_stream_si256(reinterpret_cast<__m256i*>(p), h);
  else
    _mm256_mask_storeu_epi16(p, k, h);
}

inline void store_f32x16(float* p, __m512 v, __mmask16 k, bool stream = false) {
  if (stream && k == 0xffff && (reinterpret_cast<uintptr_t>(p) & 63) == 0)
    _mm512_stream_ps(p, v);
  else
    _mm512_mask_storeu_ps(p, k, v);
}
inline void store_f32x16(uint16_t* p, __m512 v, __mmask16 k, bool stream = false) { store_bf16x16(p, v, k, stream); }

// Rows per tile for one-register weights and broadcasts: 32 zmm registers. NV=2 (32 outputs):
// 12 x 2 accumulators + 2 weights + 1 broadcast = 27 registers; NV=1: 14 accumulators. Larger
// tiles spill (checked in the generated code); smaller ones reload each weight vector for fewer
// rows.
constexpr int avx512_mr_max(int nv) { return nv == 1 ? 14 : 12; }

struct Avx512F32 : Avx512Lanes {
  using xelem = float;
  using welem = float;
  using yelem = float;
  static constexpr bool kQuantized = false, kWholeGroups = false;
  static constexpr int KP = 1, NVMAX = 2;
  static constexpr int mr_max(int nv) { return avx512_mr_max(nv); }
  using acc_t = __m512;
  using w_t = __m512;
  using x_t = __m512;
  static acc_t zero() { return _mm512_setzero_ps(); }
  static acc_t load_bias(const float* p, mask_t k) { return _mm512_maskz_loadu_ps(k, p); }
  static w_t load_w(const float* p, mask_t k) { return _mm512_maskz_loadu_ps(k, p); }
  static x_t load_x(const float* p) { return _mm512_set1_ps(*p); }
  static x_t load_x_single(const float* p) { return _mm512_set1_ps(*p); }
  static acc_t fma(acc_t a, w_t w, x_t x) { return _mm512_fmadd_ps(w, x, a); }
  static void store(float* p, acc_t a, mask_t k, bool stream) { store_f32x16(p, a, k, stream); }
};

// bf16 without AVX512_BF16: each (W[n,k], W[n,k+1]) lane widens to two fp32 vectors.
struct Avx512Bf16Widen : Avx512Lanes {
  using xelem = uint16_t;
  using welem = uint16_t;
  using yelem = uint16_t;
  static constexpr bool kQuantized = false, kWholeGroups = false;
  static constexpr int KP = 2, NVMAX = 2;
  // NV=2 holds 4 widened weight vectors and 2 broadcasts: 10 x 2 accumulators fit.
  static constexpr int mr_max(int nv) { return nv == 1 ? 14 : 10; }
  using acc_t = __m512;
  struct w_t { __m512 even, odd; };
  struct x_t { __m512 lo, hi; };
  static acc_t zero() { return _mm512_setzero_ps(); }
  static acc_t load_bias(const float* p, mask_t k) { return _mm512_maskz_loadu_ps(k, p); }
  static w_t load_w(const uint16_t* p, mask_t k) {
    const __m512i v = _mm512_maskz_loadu_epi32(k, p);
    return {_mm512_castsi512_ps(_mm512_slli_epi32(v, 16)),
            _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32(int(0xffff0000u))))};
  }
  static x_t load_x(const uint16_t* p) {
    return {_mm512_set1_ps(bf16_bits_to_f32(p[0])), _mm512_set1_ps(bf16_bits_to_f32(p[1]))};
  }
  static x_t load_x_single(const uint16_t* p) {
    return {_mm512_set1_ps(bf16_bits_to_f32(p[0])), _mm512_setzero_ps()};
  }
  static acc_t fma(acc_t a, w_t w, x_t x) {
    return _mm512_fmadd_ps(w.odd, x.hi, _mm512_fmadd_ps(w.even, x.lo, a));
  }
  static void store(uint16_t* p, acc_t a, mask_t k, bool stream) { store_bf16x16(p, a, k, stream); }
};

}  // namespace
}  // namespace cpu
}  // namespace sparsebert
