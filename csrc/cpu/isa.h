// Run-time choice of the CPU instruction set.
//
// Every CPU kernel is compiled once per ISA level, each translation unit with its own -m flags
// (see setup.py), and the level is chosen here at run time from the CPU's features. Nothing is
// compiled with -march=native, so one binary runs on any x86-64 machine.
#pragma once

#include <string>

namespace sparsebert {

// Ordered: a higher level implies every lower one.
enum class Isa : int {
  kScalar = 0,      // plain C++; any x86-64
  kAvx2 = 1,        // AVX2 + FMA (Haswell, Zen 1 and later)
  kAvx512 = 2,      // AVX-512 F/BW/VL/DQ (Skylake-X, Ice Lake); bf16 via conversion to fp32
  kAvx512Bf16 = 3,  // AVX-512 plus AVX512_BF16 (vdpbf16ps: Cooper Lake, Sapphire Rapids, Zen 4)
  kAmx = 4,         // plus AMX-TILE and AMX-BF16, granted by the OS (Sapphire Rapids and later);
                    // used for bf16 matmuls of the shapes AMX tiles fit, AVX-512 elsewhere
};

// The best level this CPU (and its OS) supports.
Isa detected_isa();

// The level kernels use now: detected_isa(), or the level named by the environment variable
// SPARSEBERT_ISA (scalar | avx2 | avx512 | avx512bf16 | amx), read on every call so tests can switch.
// Raises if the variable names an unknown level or one above what the CPU supports.
Isa active_isa();

const char* isa_name(Isa isa);

}  // namespace sparsebert
