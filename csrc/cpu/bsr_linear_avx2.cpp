// bsr_linear for AVX2 + FMA (compiled with -mavx2 -mfma). bf16 is widened to fp32 in registers:
// AVX2 has no bf16 arithmetic.
#include "avx2_traits.h"

namespace sparsebert {
namespace cpu {
namespace {

// 16 ymm registers: a tile of MR x NV accumulators plus NV weight vectors plus one broadcast.
struct Avx2F32 : Avx2Lanes {
  using xelem = float;
  using welem = float;
  using yelem = float;
  static constexpr bool kQuantized = false, kWholeGroups = false;
  static constexpr int KP = 1, NVMAX = 2;
  // NV=2: 6 x 2 accumulators + 2 weights + 1 broadcast = 15 of 16 registers.
  static constexpr int mr_max(int nv) { return nv == 1 ? 8 : 6; }
  using acc_t = __m256;
  using w_t = __m256;
  using x_t = __m256;
  static acc_t zero() { return _mm256_setzero_ps(); }
  static acc_t load_bias(const float* p, mask_t k) { return _mm256_maskload_ps(p, k.v); }
  static w_t load_w(const float* p, mask_t k) { return _mm256_maskload_ps(p, k.v); }
  static x_t load_x(const float* p) { return _mm256_broadcast_ss(p); }
  static x_t load_x_single(const float* p) { return _mm256_broadcast_ss(p); }
  static acc_t fma(acc_t a, w_t w, x_t x) { return _mm256_fmadd_ps(w, x, a); }
  static void store(float* p, acc_t a, mask_t k, bool) { _mm256_maskstore_ps(p, k.v, a); }
};

struct Avx2Bf16 : Avx2Lanes {
  using xelem = uint16_t;
  using welem = uint16_t;
  using yelem = uint16_t;
  static constexpr bool kQuantized = false, kWholeGroups = false;
  static constexpr int KP = 2, NVMAX = 2;
  // A bf16 weight pair widens to two fp32 vectors, so NV=2 holds 4 weight registers.
  static constexpr int mr_max(int nv) { return nv == 1 ? 6 : 4; }
  using acc_t = __m256;
  struct w_t { __m256 even, odd; };
  struct x_t { __m256 lo, hi; };
  static acc_t zero() { return _mm256_setzero_ps(); }
  static acc_t load_bias(const float* p, mask_t k) { return _mm256_maskload_ps(p, k.v); }
  static w_t load_w(const uint16_t* p, mask_t k) {
    // Each 32-bit lane holds (W[n, k], W[n, k+1]); shifting/masking yields both as fp32.
    const __m256i v = _mm256_maskload_epi32(reinterpret_cast<const int*>(p), k.v);
    return {_mm256_castsi256_ps(_mm256_slli_epi32(v, 16)),
            _mm256_castsi256_ps(_mm256_and_si256(v, _mm256_set1_epi32(int(0xffff0000u))))};
  }
  static x_t load_x(const uint16_t* p) {
    return {_mm256_set1_ps(bf16_bits_to_f32(p[0])), _mm256_set1_ps(bf16_bits_to_f32(p[1]))};
  }
  static x_t load_x_single(const uint16_t* p) {
    return {_mm256_set1_ps(bf16_bits_to_f32(p[0])), _mm256_setzero_ps()};
  }
  static acc_t fma(acc_t a, w_t w, x_t x) {
    return _mm256_fmadd_ps(w.odd, x.hi, _mm256_fmadd_ps(w.even, x.lo, a));
  }
  static void store(uint16_t* p, acc_t a, mask_t k, bool) { store8<uint16_t>(p, a, k); }
};

}  // namespace

void bsr_linear_f32_avx2(const BsrLinearArgs& a, int64_t rb0, int64_t rb1, int64_t m0, int64_t m1) {
  bsr_linear_impl<Avx2F32>(a, rb0, rb1, m0, m1);
}

void bsr_linear_bf16_avx2(const BsrLinearArgs& a, int64_t rb0, int64_t rb1, int64_t m0, int64_t m1) {
  bsr_linear_impl<Avx2Bf16>(a, rb0, rb1, m0, m1);
}

}  // namespace cpu
}  // namespace sparsebert
