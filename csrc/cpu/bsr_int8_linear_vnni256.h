// INT8 bsr_linear with 256-bit vpdpbusd, for CPUs of the avx2 level that have it: AVX-VNNI, the
// VEX-encoded form (Intel Alder Lake and later client cores, Sierra Forest and other E-core Xeons
// without AVX-512). Eight outputs per vector, each 32-bit lane one output's k-quad, as in the
// AVX-512 VNNI kernel at half the width: one vpdpbusd per k-quad and 8 outputs, exact in int32,
// where the AVX2 kernel without it widens both operands to int16 and needs two vpmaddwd and two
// adds (see bsr_int8_linear_avx2.cpp).
//
// Included by two files that differ only in the instruction's encoding, given here as
// SPARSEBERT_DPBUSD256(acc, u8, s8):
//   bsr_int8_linear_avxvnni.cpp           -mavxvnni, VEX: CPUs with AVX-VNNI;
//   bsr_int8_linear_vnni256_avx512vnni.cpp AVX512_VNNI + VL, EVEX: the same instruction on CPUs
//                                          with AVX-512 VNNI but not AVX-VNNI (Ice Lake, Zen 4),
//                                          run when the avx2 level is forced there, so the kernel
//                                          is tested and measured on those machines too.
#pragma once

#include <cstdint>
#include <cstring>

#include "avx2_traits.h"

#ifndef SPARSEBERT_DPBUSD256
#error "define SPARSEBERT_DPBUSD256(acc, u8, s8) before including bsr_int8_linear_vnni256.h"
#endif

namespace sparsebert {
namespace cpu {
namespace {

template <class Y>
struct Vnni256Int8 : Avx2Lanes {
  using xelem = uint8_t;
  using welem = int8_t;
  using yelem = Y;
  static constexpr bool kQuantized = true, kWholeGroups = true;
  static constexpr int KP = 4, NVMAX = 2;
  // 16 ymm: MR * NV accumulators + NV weight vectors + one broadcast.
  static constexpr int mr_max(int nv) { return nv == 1 ? 12 : 6; }
  using acc_t = __m256i;
  using w_t = __m256i;
  using x_t = __m256i;
  static acc_t zero() { return _mm256_setzero_si256(); }
  static w_t load_w(const int8_t* p, mask_t k) {
    return _mm256_maskload_epi32(reinterpret_cast<const int*>(p), k.v);  // 8 outputs x 4 inputs
  }
  static x_t load_x(const uint8_t* p) {
    uint32_t quad;
    std::memcpy(&quad, p, 4);
    return _mm256_set1_epi32(static_cast<int>(quad));
  }
  static x_t load_x_single(const uint8_t* p) { return load_x(p); }
  static acc_t fma(acc_t a, w_t w, x_t x) { return SPARSEBERT_DPBUSD256(a, x, w); }
  struct cols_t {
    __m256i sum, sum128;  // sum128 = 128 * col_sum: symmetric rows need no multiply
    __m256 scale, bias;
    bool has_bias, gelu;
  };
  static cols_t load_cols(mask_t k, const float* col_scale, const int32_t* col_sum, const float* bias, bool gelu) {
    const __m256i sum = _mm256_maskload_epi32(col_sum, k.v);
    return {sum, _mm256_slli_epi32(sum, 7), _mm256_maskload_ps(col_scale, k.v),
            bias ? _mm256_maskload_ps(bias, k.v) : _mm256_setzero_ps(), bias != nullptr, gelu};
  }
  // acc (int32) -> (acc - row_zero * col_sum) * row_scale * col_scale + bias, stored as Y.
  static void store_q(Y* p, acc_t a, mask_t k, float row_scale, int32_t row_zero, const cols_t& c, bool) {
    const __m256i zs = row_zero == 128 ? c.sum128 : _mm256_mullo_epi32(c.sum, _mm256_set1_epi32(row_zero));
    __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(a, zs)), _mm256_set1_ps(row_scale));
    v = _mm256_mul_ps(v, c.scale);
    if (c.has_bias) v = _mm256_add_ps(v, c.bias);
    if (c.gelu) v = vgelu(v);
    store8<Y>(p, v, k);
  }
};

}  // namespace
}  // namespace cpu
}  // namespace sparsebert
