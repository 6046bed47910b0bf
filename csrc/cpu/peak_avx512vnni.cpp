// INT8 peak: vpdpbusd, 64 u8 x s8 multiply-adds into 16 int32 lanes per instruction (the
// instruction of the INT8 linear kernels on CPUs without AMX). See peak_kernel.h.
#include <immintrin.h>

#include "peak_impl.h"

namespace sparsebert {
namespace cpu {

PeakResult peak_int8_vnni_avx512vnni(int64_t iters) {
  // Four products of 1 * 1 per lane and instruction: int32 wraps only after 2^29 iterations.
  const __m512i a = _mm512_set1_epi8(1), b = _mm512_set1_epi8(1);
  return run_chains<16, __m512i>(
      iters, 64 * 2, [](int i) { return _mm512_set1_epi32(i); },
      [&](__m512i acc) { return _mm512_dpbusd_epi32(acc, a, b); },
      [](__m512i x, __m512i y) { return _mm512_add_epi32(x, y); },
      [](__m512i s) { return static_cast<float>(_mm512_reduce_add_epi32(s)); });
}

}  // namespace cpu
}  // namespace sparsebert
