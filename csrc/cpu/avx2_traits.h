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

// The INT8 epilogue of 8 outputs at a time, shared by the AVX2 (vpmaddwd) and 256-bit VNNI
// kernels: their per-output factors, and the exact int32 sums of a row ->
// (sums - row_zero * col_sum) * row_scale * col_scale + bias, then the optional GELU, stored as Y.
template <class Y>
struct Avx2Int8Epilogue {
  struct cols_t {
    __m256i sum, sum128;  // sum128 = 128 * col_sum: symmetric rows need no multiply
    __m256 scale, bias;
    bool has_bias, gelu;
  };
  static cols_t load_cols(Avx2Mask k, const float* col_scale, const int32_t* col_sum, const float* bias, bool gelu) {
    const __m256i sum = _mm256_maskload_epi32(col_sum, k.v);
    return {sum, _mm256_slli_epi32(sum, 7), _mm256_maskload_ps(col_scale, k.v),
            bias ? _mm256_maskload_ps(bias, k.v) : _mm256_setzero_ps(), bias != nullptr, gelu};
  }
  static void store_sums(Y* p, __m256i sums, const Avx2Mask& k, float row_scale, int32_t row_zero, const cols_t& c) {
    const __m256i zs = row_zero == 128 ? c.sum128 : _mm256_mullo_epi32(c.sum, _mm256_set1_epi32(row_zero));
    __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(sums, zs)), _mm256_set1_ps(row_scale));
    v = _mm256_mul_ps(v, c.scale);
    if (c.has_bias) v = _mm256_add_ps(v, c.bias);
    if (c.gelu) v = vgelu(v);
    store8<Y>(p, v, k);
  }
};

}  // namespace
}  // namespace cpu
}  // namespace sparsebert
