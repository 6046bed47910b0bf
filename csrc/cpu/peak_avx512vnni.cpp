// INT8 peak: vpdpbusd, 64 u8 x s8 multiply-adds into 16 int32 lanes per instruction (the
// instruction of the INT8 linear kernels on CPUs without AMX). See peak_kernel.h.
#include <immintrin.h>

#include "peak_kernel.h"

namespace sparsebert {
namespace cpu {

PeakResult peak_int8_vnni_avx512vnni(int64_t iters) {
  constexpr int kChains = 16;
  __m512i acc[kChains];
  for (int i = 0; i < kChains; ++i) acc[i] = _mm512_set1_epi32(i);
  // Four products of 1 * 1 per lane and instruction: int32 wraps only after 2^29 iterations.
  const __m512i a = _mm512_set1_epi8(1), b = _mm512_set1_epi8(1);
  for (int64_t it = 0; it < iters; ++it) {
#pragma GCC unroll 16
    for (int i = 0; i < kChains; ++i) acc[i] = _mm512_dpbusd_epi32(acc[i], a, b);
  }
  __m512i s = acc[0];
  for (int i = 1; i < kChains; ++i) s = _mm512_add_epi32(s, acc[i]);
  return {double(iters) * kChains * 64 * 2, static_cast<float>(_mm512_reduce_add_epi32(s))};
}

}  // namespace cpu
}  // namespace sparsebert
