// AVX2 helpers shared by bsr_linear_avx2.cpp and bsr_int8_linear_avx2.cpp. Internal linkage:
// each file keeps its own copy, compiled with its own flags.
#pragma once

#include <immintrin.h>

#include "bsr_linear_impl.h"
#include "vec_math.h"  // vgelu

namespace sparsebert {
namespace cpu {
namespace {

// AVX2 masks are vectors; the lane count is kept for the stores AVX2 cannot mask (16-bit).
struct Avx2Mask {
  __m256i v;
  int lanes;
};

inline Avx2Mask avx2_mask(int lanes) {
  const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return {_mm256_cmpgt_epi32(_mm256_set1_epi32(lanes), idx), lanes};
}

// What every AVX2 traits type shares: 8 lanes per vector and their masks.
struct Avx2Lanes {
  static constexpr int VL = 8;
  using mask_t = Avx2Mask;
  static mask_t mask(int lanes) { return avx2_mask(lanes); }
  static void stream_fence() {}  // no streaming stores here: stream_y is a hint they ignore
};

// Eight fp32 results stored as Y (float, or bf16 bits rounded like every other path).
template <class Y>
inline void store8(Y* p, __m256 v, const Avx2Mask& k) {
  if constexpr (sizeof(Y) == 4) {
    _mm256_maskstore_ps(reinterpret_cast<float*>(p), k.v, v);
  } else {
    alignas(32) float f[8];
    _mm256_store_ps(f, v);
    for (int i = 0; i < k.lanes && i < 8; ++i) p[i] = f32_to_bf16_bits(f[i]);
  }
}

}  // namespace
}  // namespace cpu
}  // namespace sparsebert
