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
struct Vnni256Int8 : Avx2Lanes, Avx2Int8Epilogue<Y> {
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
  using cols_t = typename Avx2Int8Epilogue<Y>::cols_t;
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
  static void store_q(Y* p, acc_t a, mask_t k, float row_scale, int32_t row_zero, const cols_t& c, bool) {
    Avx2Int8Epilogue<Y>::store_sums(p, a, k, row_scale, row_zero, c);  // the sums are whole already
  }
};

}  // namespace
}  // namespace cpu
}  // namespace sparsebert
