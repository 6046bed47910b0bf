// fp32 FMA peak with 512-bit vectors. See peak_kernel.h.
#include <immintrin.h>

#include "peak_impl.h"

namespace sparsebert {
namespace cpu {

PeakResult peak_fp32_fma_avx512(int64_t iters) {
  // acc * a + b converges (a < 1): no overflow and no denormals however long it runs.
  const __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-6f);
  // 16 chains cover latency 4-5 x 2 pipes, the most any target has.
  return run_chains<16, __m512>(
      iters, 16 * 2, [](int i) { return _mm512_set1_ps(static_cast<float>(i)); },
      [&](__m512 acc) { return _mm512_fmadd_ps(acc, a, b); }, [](__m512 x, __m512 y) { return _mm512_add_ps(x, y); },
      [](__m512 s) { return _mm512_reduce_add_ps(s); });
}

}  // namespace cpu
}  // namespace sparsebert
