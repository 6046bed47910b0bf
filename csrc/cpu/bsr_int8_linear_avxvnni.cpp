// INT8 bsr_linear with AVX-VNNI (VEX vpdpbusd, 256 bits; compiled with -mavx2 -mfma -mavxvnni):
// see bsr_int8_linear_vnni256.h.
#include <immintrin.h>

#define SPARSEBERT_DPBUSD256(acc, u8, s8) _mm256_dpbusd_avx_epi32((acc), (u8), (s8))
#include "bsr_int8_linear_vnni256.h"

namespace sparsebert {
namespace cpu {

void bsr_int8_linear_f32_avxvnni(const BsrLinearArgs& a, int64_t rb0, int64_t rb1, int64_t m0, int64_t m1) {
  bsr_linear_impl<Vnni256Int8<float>>(a, rb0, rb1, m0, m1);
}

void bsr_int8_linear_bf16_avxvnni(const BsrLinearArgs& a, int64_t rb0, int64_t rb1, int64_t m0, int64_t m1) {
  bsr_linear_impl<Vnni256Int8<uint16_t>>(a, rb0, rb1, m0, m1);
}

}  // namespace cpu
}  // namespace sparsebert
