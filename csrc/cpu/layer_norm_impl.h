// add_layer_norm written once as plain loops the compiler vectorizes with each ISA file's own -m
// flags (layer_norm_<isa>.cpp). Per row: s = x + residual (rounded to bf16 for bf16 inputs, as
// torch's bf16 add rounds), kept in a thread-local fp32 row less its first element (shifted data:
// a large common offset does not cost the mean its precision); then the mean, the variance as the
// mean of squared deviations from it (two passes over the row in L1, no cancellation), and
// out = (s - mean) / sqrt(var + eps) * weight + bias, written in the input's dtype.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "bf16_bits.h"
#include "layer_norm_kernel.h"

namespace sparsebert {
namespace cpu {
namespace {

inline float round_to_bf16(float v) { return bf16_bits_to_f32(f32_to_bf16_bits(v)); }

inline void add_layer_norm_rows(const AddLayerNormArgs& a, int64_t begin, int64_t end) {
  thread_local std::vector<float> row;
  const int64_t n = a.n;
  row.resize(n);
  float* s = row.data();
  const float* w = a.weight;
  const float* b = a.bias;
  for (int64_t i = begin; i < end; ++i) {
    float sum = 0.f;
    if (a.bf16) {
      const uint16_t* x = static_cast<const uint16_t*>(a.x) + i * n;
      const uint16_t* r = static_cast<const uint16_t*>(a.residual) + i * n;
      for (int64_t d = 0; d < n; ++d) s[d] = round_to_bf16(bf16_bits_to_f32(x[d]) + bf16_bits_to_f32(r[d]));
      const float shift = s[0];
#pragma omp simd reduction(+ : sum)
      for (int64_t d = 0; d < n; ++d) {
        s[d] -= shift;
        sum += s[d];
      }
    } else {
      const float* x = static_cast<const float*>(a.x) + i * n;
      const float* r = static_cast<const float*>(a.residual) + i * n;
      const float shift = x[0] + r[0];
#pragma omp simd reduction(+ : sum)
      for (int64_t d = 0; d < n; ++d) {
        const float v = (x[d] + r[d]) - shift;
        s[d] = v;
        sum += v;
      }
    }
    const float mean = sum / static_cast<float>(n);  // of the shifted row: s - mean is the deviation
    float sq = 0.f;
#pragma omp simd reduction(+ : sq)
    for (int64_t d = 0; d < n; ++d) {
      const float c = s[d] - mean;
      sq += c * c;
    }
    const float rstd = 1.f / std::sqrt(sq / static_cast<float>(n) + a.eps);
    if (a.bf16) {
      uint16_t* o = static_cast<uint16_t*>(a.out) + i * n;
      for (int64_t d = 0; d < n; ++d) o[d] = f32_to_bf16_bits((s[d] - mean) * rstd * w[d] + b[d]);
    } else {
      float* o = static_cast<float*>(a.out) + i * n;
#pragma omp simd
      for (int64_t d = 0; d < n; ++d) o[d] = (s[d] - mean) * rstd * w[d] + b[d];
    }
  }
}

}  // namespace
}  // namespace cpu
}  // namespace sparsebert
