// INT8 bsr_linear and activation quantization for any x86-64 CPU (no ISA flags).
#include <cmath>

#include "bsr_linear_impl.h"

namespace sparsebert {
namespace cpu {
namespace {

// 0.5 v (1 + erf(v / sqrt 2)): the exact GELU (kActGelu).
inline float gelu_f32(float v) { return 0.5f * v * (1.f + std::erf(v * 0.707106781186547524f)); }

template <class Y>
void store_float(Y* p, float v);
template <>
void store_float<float>(float* p, float v) { *p = v; }
template <>
void store_float<uint16_t>(uint16_t* p, float v) { *p = f32_to_bf16_bits(v); }

template <class Y>
struct ScalarInt8 : ScalarLanes {
  using xelem = uint8_t;
  using welem = int8_t;
  using yelem = Y;
  static constexpr bool kQuantized = true, kWholeGroups = true;
  static constexpr int KP = 4, NVMAX = 16;
  static constexpr int mr_max(int) { return 4; }
  using acc_t = int32_t;
  struct w_t { int32_t w[4]; };
  struct x_t { int32_t x[4]; };
  static acc_t zero() { return 0; }
  static w_t load_w(const int8_t* p, mask_t k) {
    if (!k) return {{0, 0, 0, 0}};
    return {{p[0], p[1], p[2], p[3]}};
  }
  static x_t load_x(const uint8_t* p) { return {{p[0], p[1], p[2], p[3]}}; }
  static x_t load_x_single(const uint8_t* p) { return load_x(p); }
  static acc_t fma(acc_t a, w_t w, x_t x) {
    return a + x.x[0] * w.w[0] + x.x[1] * w.w[1] + x.x[2] * w.w[2] + x.x[3] * w.w[3];
  }
  // One output's factors, read only where the output exists.
  struct cols_t {
    const float* scale;
    const int32_t* sum;
    const float* bias;
    bool gelu;
  };
  static cols_t load_cols(mask_t, const float* col_scale, const int32_t* col_sum, const float* bias, bool gelu) {
    return {col_scale, col_sum, bias, gelu};
  }
  static void store_q(Y* p, acc_t a, mask_t k, float row_scale, int32_t row_zero, const cols_t& c, bool) {
    if (!k) return;
    float v = static_cast<float>(a - row_zero * c.sum[0]) * row_scale * c.scale[0];
    if (c.bias) v += c.bias[0];
    store_float<Y>(p, c.gelu ? gelu_f32(v) : v);
  }
};

// Weight-only: X is float or bf16 bits (uint16_t).
template <class X, class Y>
struct ScalarWeightOnly : ScalarLanes {
  using xelem = X;
  using welem = int8_t;
  using yelem = Y;
  static constexpr bool kQuantized = true, kWholeGroups = false;
  static constexpr int KP = 1, NVMAX = 16;
  static constexpr int mr_max(int) { return 4; }
  using acc_t = float;
  using w_t = float;
  using x_t = float;
  static acc_t zero() { return 0.f; }
  static w_t load_w(const int8_t* p, mask_t k) { return k ? static_cast<float>(*p) : 0.f; }
  static x_t load_x(const X* p) {
    if constexpr (sizeof(X) == 2) return bf16_bits_to_f32(*p);
    else return *p;
  }
  static x_t load_x_single(const X* p) { return load_x(p); }
  static acc_t fma(acc_t a, w_t w, x_t x) { return a + w * x; }
  struct cols_t {
    const float* scale;
    const float* bias;
    bool gelu;
  };
  static cols_t load_cols(mask_t, const float* col_scale, const int32_t*, const float* bias, bool gelu) {
    return {col_scale, bias, gelu};
  }
  static void store_q(Y* p, acc_t a, mask_t k, float, int32_t, const cols_t& c, bool) {
    if (!k) return;
    float v = a * c.scale[0];
    if (c.bias) v += c.bias[0];
    store_float<Y>(p, c.gelu ? gelu_f32(v) : v);
  }
};

}  // namespace

void int8_weight_only_f32_scalar(const BsrLinearArgs& a, int64_t rb0, int64_t rb1, int64_t m0, int64_t m1) {
  bsr_linear_impl<ScalarWeightOnly<float, float>>(a, rb0, rb1, m0, m1);
}

void int8_weight_only_bf16_scalar(const BsrLinearArgs& a, int64_t rb0, int64_t rb1, int64_t m0, int64_t m1) {
  bsr_linear_impl<ScalarWeightOnly<uint16_t, uint16_t>>(a, rb0, rb1, m0, m1);
}

void bsr_int8_linear_f32_scalar(const BsrLinearArgs& a, int64_t rb0, int64_t rb1, int64_t m0, int64_t m1) {
  bsr_linear_impl<ScalarInt8<float>>(a, rb0, rb1, m0, m1);
}

void bsr_int8_linear_bf16_scalar(const BsrLinearArgs& a, int64_t rb0, int64_t rb1, int64_t m0, int64_t m1) {
  bsr_linear_impl<ScalarInt8<uint16_t>>(a, rb0, rb1, m0, m1);
}

void quantize_rows_scalar(const void* x, int64_t lda, bool bf16, int64_t m0, int64_t m1, int64_t K,
                          uint8_t* out, int64_t ldq, float* scale, int32_t* zero, bool asymmetric,
                          const float* range) {
  for (int64_t m = m0; m < m1; ++m) {
    auto at = [&](int64_t k) {
      return bf16 ? bf16_bits_to_f32(static_cast<const uint16_t*>(x)[m * lda + k])
                  : static_cast<const float*>(x)[m * lda + k];
    };
    float lo = 0.f, hi = 0.f;
    bool bad = false;
    for (int64_t k = 0; k < K; ++k) {
      bad |= !std::isfinite(at(k));
      lo = std::fmin(lo, at(k));
      hi = std::fmax(hi, at(k));
    }
    if (bad) {
      scale[m] = std::nanf("");  // the caller raises
      continue;
    }
    if (range) {
      lo = range[0];
      hi = range[1];
    }
    float inv, qmin, qmax;
    int32_t zp;
    if (asymmetric) {
      inv = hi > lo ? 255.f / (hi - lo) : 0.f;
      scale[m] = (hi - lo) / 255.f;
      zp = static_cast<int32_t>(std::fmin(255.f, std::fmax(0.f, std::nearbyint(-lo * inv))));
      qmin = 0.f;
      qmax = 255.f;
    } else {
      const float amax = std::fmax(-lo, hi);
      inv = amax > 0.f ? 127.f / amax : 0.f;
      scale[m] = amax / 127.f;
      zp = 128;
      qmin = 1.f;
      qmax = 255.f;
    }
    zero[m] = zp;
    uint8_t* q = out + m * ldq;
    for (int64_t k = 0; k < K; ++k) {
      // round half to even (default rounding mode), then the zero point
      const float v = std::fmin(qmax, std::fmax(qmin, std::nearbyint(at(k) * inv) + static_cast<float>(zp)));
      q[k] = static_cast<uint8_t>(v);
    }
    for (int64_t k = K; k < ldq; ++k) q[k] = static_cast<uint8_t>(zp);
  }
}

}  // namespace cpu
}  // namespace sparsebert
