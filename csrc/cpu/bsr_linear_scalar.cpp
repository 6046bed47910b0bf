// bsr_linear for any x86-64 CPU: the same micro-kernel as the vector paths, with a "vector" of
// one lane, compiled with no ISA flags.
#include "bsr_linear_impl.h"

namespace sparsebert {
namespace cpu {
namespace {

struct ScalarF32 : ScalarLanes {
  using xelem = float;
  using welem = float;
  using yelem = float;
  static constexpr bool kQuantized = false, kWholeGroups = false;
  static constexpr int KP = 1, NVMAX = 16;
  static constexpr int mr_max(int) { return 4; }
  using acc_t = float;
  using w_t = float;
  using x_t = float;
  static acc_t zero() { return 0.f; }
  static acc_t load_bias(const float* p, mask_t k) { return k ? *p : 0.f; }
  static w_t load_w(const float* p, mask_t k) { return k ? *p : 0.f; }
  static x_t load_x(const float* p) { return *p; }
  static x_t load_x_single(const float* p) { return *p; }
  static acc_t fma(acc_t a, w_t w, x_t x) { return a + w * x; }
  static void store(float* p, acc_t a, mask_t k, bool) {
    if (k) *p = a;
  }
};

struct ScalarBf16 : ScalarLanes {
  using xelem = uint16_t;
  using welem = uint16_t;
  using yelem = uint16_t;
  static constexpr bool kQuantized = false, kWholeGroups = false;
  static constexpr int KP = 2, NVMAX = 16;
  static constexpr int mr_max(int) { return 4; }
  using acc_t = float;
  struct w_t { float even, odd; };
  struct x_t { float lo, hi; };
  static acc_t zero() { return 0.f; }
  static acc_t load_bias(const float* p, mask_t k) { return k ? *p : 0.f; }
  static w_t load_w(const uint16_t* p, mask_t k) {
    if (!k) return {0.f, 0.f};
    return {bf16_bits_to_f32(p[0]), bf16_bits_to_f32(p[1])};
  }
  static x_t load_x(const uint16_t* p) { return {bf16_bits_to_f32(p[0]), bf16_bits_to_f32(p[1])}; }
  static x_t load_x_single(const uint16_t* p) { return {bf16_bits_to_f32(p[0]), 0.f}; }
  static acc_t fma(acc_t a, w_t w, x_t x) { return a + w.even * x.lo + w.odd * x.hi; }
  static void store(uint16_t* p, acc_t a, mask_t k, bool) {
    if (k) *p = f32_to_bf16_bits(a);
  }
};

}  // namespace

void bsr_linear_f32_scalar(const BsrLinearArgs& a, int64_t rb0, int64_t rb1, int64_t m0, int64_t m1) {
  bsr_linear_impl<ScalarF32>(a, rb0, rb1, m0, m1);
}

void bsr_linear_bf16_scalar(const BsrLinearArgs& a, int64_t rb0, int64_t rb1, int64_t m0, int64_t m1) {
  bsr_linear_impl<ScalarBf16>(a, rb0, rb1, m0, m1);
}

}  // namespace cpu
}  // namespace sparsebert
