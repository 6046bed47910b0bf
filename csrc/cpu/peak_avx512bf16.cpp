// bf16 dot-product peak: vdpbf16ps, 32 bf16 multiply-adds into 16 fp32 lanes per instruction
// (the instruction of the bf16 linear kernels on CPUs without AMX). See peak_kernel.h.
#include <immintrin.h>

#include "peak_kernel.h"

namespace sparsebert {
namespace cpu {

PeakResult peak_bf16_dot_avx512bf16(int64_t iters) {
  constexpr int kChains = 16;
  __m512 acc[kChains];
  for (int i = 0; i < kChains; ++i) acc[i] = _mm512_setzero_ps();
  // 0.5 * 0.5 per product: each lane grows by 0.5 per instruction, far from overflow.
  const __m512bh a = (__m512bh)_mm512_set1_epi16(0x3f00), b = (__m512bh)_mm512_set1_epi16(0x3f00);
  for (int64_t it = 0; it < iters; ++it) {
#pragma GCC unroll 16
    for (int i = 0; i < kChains; ++i) acc[i] = _mm512_dpbf16_ps(acc[i], a, b);
  }
  __m512 s = acc[0];
  for (int i = 1; i < kChains; ++i) s = _mm512_add_ps(s, acc[i]);
  return {double(iters) * kChains * 32 * 2, _mm512_reduce_add_ps(s)};
}

}  // namespace cpu
}  // namespace sparsebert
