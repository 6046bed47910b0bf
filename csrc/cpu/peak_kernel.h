// Peak-throughput loops: independent chains of one instruction (FMA, vdpbf16ps, vpdpbusd, the AMX
// tile multiplies), enough of them to cover its latency on every core this targets, nothing else
// in the loop. The benchmarks divide each kernel's operations per second by these, so every speed
// claim says how close to the CPU's own limit it is. Each ISA file (peak_<isa>.cpp) compiles with
// its flags; the dispatcher (peak.cpp) runs one loop per thread of torch's pool.
#pragma once

#include <cstdint>

namespace sparsebert {
namespace cpu {

// Each runs `iters` iterations on the calling thread and returns the operations done (a
// multiply-add counts 2) and a value derived from every accumulator (so nothing is dead code).
struct PeakResult {
  double ops;
  float sink;
};
PeakResult peak_fp32_fma_avx2(int64_t iters);
PeakResult peak_fp32_fma_avx512(int64_t iters);
PeakResult peak_bf16_dot_avx512bf16(int64_t iters);
PeakResult peak_int8_vnni_avx512vnni(int64_t iters);
// vpdpbusd on ymm: AVX-VNNI (VEX), and the EVEX form on CPUs with AVX-512 VNNI but not AVX-VNNI.
PeakResult peak_int8_vnni256_avxvnni(int64_t iters);
PeakResult peak_int8_vnni256_evex(int64_t iters);
// AMX tile multiplies (TDPBUSD, TDPBF16PS), four accumulator tiles; the amx level only.
PeakResult peak_int8_amx(int64_t iters);
PeakResult peak_bf16_amx(int64_t iters);
// TDPBUSD with two A and two B tile loads from L1 per four multiplies, as the AMX INT8 kernel's
// inner loop issues them; the amx level only.
PeakResult peak_int8_amx_loaded(int64_t iters);

}  // namespace cpu
}  // namespace sparsebert
