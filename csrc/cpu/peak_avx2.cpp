// fp32 FMA peak with 256-bit vectors (AVX2 + FMA). See peak_kernel.h.
#include <immintrin.h>

#include "peak_kernel.h"

namespace sparsebert {
namespace cpu {

PeakResult peak_fp32_fma_avx2(int64_t iters) {
  constexpr int kChains = 12;  // 16 ymm registers: 12 accumulators and the two operands
  __m256 acc[kChains];
  for (int i = 0; i < kChains; ++i) acc[i] = _mm256_set1_ps(static_cast<float>(i));
  // acc * a + b converges (a < 1): no overflow and no denormals however long it runs.
  const __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-6f);
  for (int64_t it = 0; it < iters; ++it) {
#pragma GCC unroll 16
    for (int i = 0; i < kChains; ++i) acc[i] = _mm256_fmadd_ps(acc[i], a, b);
  }
  __m256 s = acc[0];
  for (int i = 1; i < kChains; ++i) s = _mm256_add_ps(s, acc[i]);
  alignas(32) float out[8];
  _mm256_store_ps(out, s);
  return {double(iters) * kChains * 8 * 2, out[0] + out[7]};
}

}  // namespace cpu
}  // namespace sparsebert
