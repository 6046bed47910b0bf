// The 256-bit VNNI INT8 kernel of bsr_int8_linear_vnni256.h with EVEX vpdpbusd (AVX512_VNNI +
// AVX512_VL): the same instruction and numbers as the AVX-VNNI build, for CPUs that have AVX-512
// VNNI but not AVX-VNNI when the avx2 level is forced (SPARSEBERT_ISA=avx2).
#include <immintrin.h>

#define SPARSEBERT_DPBUSD256(acc, u8, s8) _mm256_dpbusd_epi32((acc), (u8), (s8))
#include "bsr_int8_linear_vnni256.h"

namespace sparsebert {
namespace cpu {

void bsr_int8_linear_f32_vnni256_evex(const BsrLinearArgs& a, int64_t rb0, int64_t rb1, int64_t m0, int64_t m1) {
  bsr_linear_impl<Vnni256Int8<float>>(a, rb0, rb1, m0, m1);
}

void bsr_int8_linear_bf16_vnni256_evex(const BsrLinearArgs& a, int64_t rb0, int64_t rb1, int64_t m0, int64_t m1) {
  bsr_linear_impl<Vnni256Int8<uint16_t>>(a, rb0, rb1, m0, m1);
}

}  // namespace cpu
}  // namespace sparsebert
