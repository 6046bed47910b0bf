// Runs one peak loop (peak_<isa>.cpp) on every thread of torch's pool at once and times the
// parallel region.
#include "peak.h"

#include <ATen/Parallel.h>

#include <chrono>
#include <stdexcept>
#include <vector>

#include "isa.h"
#include "peak_kernel.h"

namespace sparsebert {

PeakMeasurement measure_peak(const std::string& kind, int64_t iters) {
  using Fn = cpu::PeakResult (*)(int64_t);
  const Isa isa = active_isa();
  Fn fn = nullptr;
  Isa needs = Isa::kAvx512Bf16;
  if (kind == "fp32_fma") {
    needs = Isa::kAvx2;
    fn = isa >= Isa::kAvx512 ? cpu::peak_fp32_fma_avx512 : isa >= Isa::kAvx2 ? cpu::peak_fp32_fma_avx2 : nullptr;
  } else if (kind == "bf16_dot") {
    fn = isa >= Isa::kAvx512Bf16 ? cpu::peak_bf16_dot_avx512bf16 : nullptr;
  } else if (kind == "int8_vnni") {
    // the vpdpbusd the INT8 kernels use at this level: 512 bits, 256 bits, or none
    needs = Isa::kAvx2;
    const Int8Dot dot = active_int8_dot(isa);
    fn = dot == Int8Dot::kVnni512 ? cpu::peak_int8_vnni_avx512vnni
         : dot == Int8Dot::kVnni256 ? (cpu_has_avx_vnni() ? cpu::peak_int8_vnni256_avxvnni : cpu::peak_int8_vnni256_evex)
                                    : nullptr;
  } else if (kind == "int8_amx" || kind == "bf16_amx" || kind == "int8_amx_loaded") {
    needs = Isa::kAmx;
    if (isa == Isa::kAmx)
      fn = kind == "int8_amx" ? cpu::peak_int8_amx : kind == "bf16_amx" ? cpu::peak_bf16_amx : cpu::peak_int8_amx_loaded;
  } else {
    throw std::invalid_argument("kind='" + kind +
                                "' is not a peak; use fp32_fma, bf16_dot, int8_vnni, int8_amx, bf16_amx or "
                                "int8_amx_loaded");
  }
  if (fn == nullptr)
    throw std::invalid_argument("the " + kind + " peak needs the " + isa_name(needs) + " ISA level" +
                                (kind == "int8_vnni" ? " and VNNI in use" : "") + "; the active level is " +
                                isa_name(isa) + (kind == "int8_vnni" ? std::string(", INT8 dot product ") +
                                                     int8_dot_name(active_int8_dot(isa)) : std::string()));
  if (iters < 1) throw std::invalid_argument("iters must be >= 1, got " + std::to_string(iters));
  const int threads = at::get_num_threads();
  std::vector<cpu::PeakResult> res(threads);
  const auto t0 = std::chrono::steady_clock::now();
  at::parallel_for(0, threads, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) res[i] = fn(iters);
  });
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  double ops = 0;
  float sink = 0;
  for (const auto& r : res) {
    ops += r.ops;
    sink += r.sink;
  }
  // Never true for finite accumulators; the comparison keeps every loop's result alive.
  if (sink != sink) throw std::runtime_error("peak loop produced NaN");
  return {ops, secs, threads};
}

}  // namespace sparsebert
