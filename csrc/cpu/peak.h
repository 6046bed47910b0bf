// The CPU's measured peaks (see peak_kernel.h), for the benchmarks' roofline columns.
#pragma once

#include <cstdint>
#include <string>

namespace sparsebert {

struct PeakMeasurement {
  double ops;      // operations done by all threads (a multiply-add counts 2)
  double seconds;  // wall time of the parallel region
  int threads;     // threads of torch's pool, one loop each
};

// kind: "fp32_fma" (AVX-512 or AVX2 FMA, following the active ISA level), "bf16_dot" (vdpbf16ps)
// or "int8_vnni" (vpdpbusd), each of the last two needing the avx512bf16 level. Throws
// std::invalid_argument naming the kind, or the level it needs and the active one.
PeakMeasurement measure_peak(const std::string& kind, int64_t iters);

}  // namespace sparsebert
