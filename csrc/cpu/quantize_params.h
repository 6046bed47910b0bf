// The per-row parameters of dynamic activation quantization, computed alike by every vectorized
// quantizer (quantize_rows_avx512, quantize_rows_avx2; the plain C++ one has the same arithmetic
// with std::nearbyint): from the row's range [lo, hi] (0 included, or the calibrated range), the
// inverse scale the values are multiplied by, the scale stored for the epilogue, the zero point
// and the smallest stored byte (1 when symmetric: q in -127..127, stored as q + 128).
// Internal linkage: each quantizer's file compiles it with its own flags.
#pragma once

#include <immintrin.h>

#include <cstdint>

namespace sparsebert {
namespace cpu {
namespace {

struct RowQuant {
  float inv;
  int32_t zero;
  int qmin;
};

inline RowQuant row_quant(float lo, float hi, bool asymmetric, float* scale) {
  if (asymmetric) {
    const float inv = hi > lo ? 255.f / (hi - lo) : 0.f;
    *scale = (hi - lo) / 255.f;
    // round half to even, as cvtps does in the quantizing loops
    float zpf = _mm_cvtss_f32(_mm_round_ss(_mm_setzero_ps(), _mm_set_ss(-lo * inv),
                                           _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    zpf = zpf < 0.f ? 0.f : (zpf > 255.f ? 255.f : zpf);
    return {inv, static_cast<int32_t>(zpf), 0};
  }
  const float amax = -lo > hi ? -lo : hi;
  *scale = amax / 127.f;
  return {amax > 0.f ? 127.f / amax : 0.f, 128, 1};
}

}  // namespace
}  // namespace cpu
}  // namespace sparsebert
