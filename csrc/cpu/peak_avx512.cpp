// fp32 FMA peak with 512-bit vectors. See peak_kernel.h.
#include <immintrin.h>

#include "peak_kernel.h"

namespace sparsebert {
namespace cpu {

PeakResult peak_fp32_fma_avx512(int64_t iters) {
  constexpr int kChains = 16;  // covers latency 4-5 x 2 pipes, the most any target has
  __m512 acc[kChains];
  for (int i = 0; i < kChains; ++i) acc[i] = _mm512_set1_ps(static_cast<float>(i));
  const __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-6f);
  for (int64_t it = 0; it < iters; ++it) {
#pragma GCC unroll 16
    for (int i = 0; i < kChains; ++i) acc[i] = _mm512_fmadd_ps(acc[i], a, b);
  }
  __m512 s = acc[0];
  for (int i = 1; i < kChains; ++i) s = _mm512_add_ps(s, acc[i]);
  return {double(iters) * kChains * 16 * 2, _mm512_reduce_add_ps(s)};
}

}  // namespace cpu
}  // namespace sparsebert
