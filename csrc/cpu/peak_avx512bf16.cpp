// bf16 dot-product peak: vdpbf16ps, 32 bf16 multiply-adds into 16 fp32 lanes per instruction
// (the instruction of the bf16 linear kernels on CPUs without AMX). See peak_kernel.h.
#include <immintrin.h>

#include "peak_impl.h"

namespace sparsebert {
namespace cpu {

PeakResult peak_bf16_dot_avx512bf16(int64_t iters) {
  // 0.5 * 0.5 per product: each lane grows by 0.5 per instruction, far from overflow.
  const __m512bh a = (__m512bh)_mm512_set1_epi16(0x3f00), b = (__m512bh)_mm512_set1_epi16(0x3f00);
  return run_chains<16, __m512>(
      iters, 32 * 2, [](int) { return _mm512_setzero_ps(); },
      [&](__m512 acc) { return _mm512_dpbf16_ps(acc, a, b); }, [](__m512 x, __m512 y) { return _mm512_add_ps(x, y); },
      [](__m512 s) { return _mm512_reduce_add_ps(s); });
}

}  // namespace cpu
}  // namespace sparsebert
