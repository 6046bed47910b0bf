// INT8 peak at 256 bits: vpdpbusd on ymm, 32 u8 x s8 multiply-adds into 8 int32 lanes per
// instruction (the 256-bit VNNI INT8 kernel's instruction, bsr_int8_linear_vnni256.h). Included
// by the AVX-VNNI (VEX) and AVX-512 VNNI + VL (EVEX) files, SPARSEBERT_DPBUSD256 defined first.
#pragma once

#include <immintrin.h>

#include "peak_impl.h"

namespace sparsebert {
namespace cpu {
namespace {

inline PeakResult peak_int8_vnni256(int64_t iters) {
  const __m256i a = _mm256_set1_epi8(1), b = _mm256_set1_epi8(1);
  return run_chains<12, __m256i>(
      iters, 32 * 2, [](int i) { return _mm256_set1_epi32(i); },
      [&](__m256i acc) { return SPARSEBERT_DPBUSD256(acc, a, b); },
      [](__m256i x, __m256i y) { return _mm256_add_epi32(x, y); },
      [](__m256i s) {
        alignas(32) int32_t v[8];
        _mm256_store_si256(reinterpret_cast<__m256i*>(v), s);
        return static_cast<float>(v[0] + v[1] + v[2] + v[3] + v[4] + v[5] + v[6] + v[7]);
      });
}

}  // namespace
}  // namespace cpu
}  // namespace sparsebert
