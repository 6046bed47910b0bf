// fp32 FMA peak with 256-bit vectors (AVX2 + FMA). See peak_kernel.h.
#include <immintrin.h>

#include "peak_impl.h"

namespace sparsebert {
namespace cpu {

PeakResult peak_fp32_fma_avx2(int64_t iters) {
  // acc * a + b converges (a < 1): no overflow and no denormals however long it runs.
  const __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-6f);
  // 16 ymm registers: 12 accumulators and the two operands.
  return run_chains<12, __m256>(
      iters, 8 * 2, [](int i) { return _mm256_set1_ps(static_cast<float>(i)); },
      [&](__m256 acc) { return _mm256_fmadd_ps(acc, a, b); }, [](__m256 x, __m256 y) { return _mm256_add_ps(x, y); },
      [](__m256 s) {
        alignas(32) float out[8];
        _mm256_store_ps(out, s);
        return out[0] + out[7];
      });
}

}  // namespace cpu
}  // namespace sparsebert
