// bsr_linear for AVX-512 F/BW/VL/DQ (compiled with those flags, no AVX512_BF16): fp32, and bf16
// widened to fp32 in registers.
#include "avx512_traits.h"

namespace sparsebert {
namespace cpu {

void bsr_linear_f32_avx512(const BsrLinearArgs& a, int64_t rb0, int64_t rb1, int64_t m0, int64_t m1) {
  bsr_linear_impl<Avx512F32>(a, rb0, rb1, m0, m1);
}

void bsr_linear_bf16_avx512(const BsrLinearArgs& a, int64_t rb0, int64_t rb1, int64_t m0, int64_t m1) {
  bsr_linear_impl<Avx512Bf16Widen>(a, rb0, rb1, m0, m1);
}

}  // namespace cpu
}  // namespace sparsebert
