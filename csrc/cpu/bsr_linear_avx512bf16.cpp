// bsr_linear bf16 with AVX512_BF16 (compiled with -mavx512bf16): vdpbf16ps multiplies the two
// bf16 of each 32-bit lane of the weight by the broadcast pair (x[m, k], x[m, k+1]) and adds
// both products to the fp32 accumulator: twice the multiply-adds of an fp32 FMA per instruction.
#include "avx512_traits.h"

namespace sparsebert {
namespace cpu {
namespace {

struct Avx512Bf16Dot : Avx512Lanes {
  using xelem = uint16_t;
  using welem = uint16_t;
  using yelem = uint16_t;
  static constexpr bool kQuantized = false, kWholeGroups = false;
  static constexpr int KP = 2, NVMAX = 2;
  static constexpr int mr_max(int nv) { return avx512_mr_max(nv); }
  using acc_t = __m512;
  using w_t = __m512bh;
  using x_t = __m512bh;
  static acc_t zero() { return _mm512_setzero_ps(); }
  static acc_t load_bias(const float* p, mask_t k) { return _mm512_maskz_loadu_ps(k, p); }
  static w_t load_w(const uint16_t* p, mask_t k) { return (__m512bh)_mm512_maskz_loadu_epi32(k, p); }
  static x_t load_x(const uint16_t* p) {
    uint32_t pair;
    std::memcpy(&pair, p, 4);
    return (__m512bh)_mm512_set1_epi32(static_cast<int>(pair));
  }
  // (x[m, k], 0): the upper half of the 32-bit lane is the second element of the pair.
  static x_t load_x_single(const uint16_t* p) { return (__m512bh)_mm512_set1_epi32(p[0]); }
  static acc_t fma(acc_t a, w_t w, x_t x) { return _mm512_dpbf16_ps(a, w, x); }
  static void store(uint16_t* p, acc_t a, mask_t k, bool stream) { store_bf16x16(p, a, k, stream); }
};

}  // namespace

void bsr_linear_bf16_avx512bf16(const BsrLinearArgs& a, int64_t rb0, int64_t rb1, int64_t m0,
                                int64_t m1) {
  bsr_linear_impl<Avx512Bf16Dot>(a, rb0, rb1, m0, m1);
}

}  // namespace cpu
}  // namespace sparsebert
