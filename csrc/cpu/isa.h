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

// INT8 dot products (vpdpbusd: u8 x s8, four products per 32-bit lane, exact in int32), which the
// levels above do not all imply. kVnni512: AVX512_VNNI (Cascade Lake, Ice Lake, and every CPU of
// the avx512bf16 and amx levels). kVnni256: its 256-bit form at the avx2 level: AVX-VNNI, the VEX
// encoding (Alder Lake and later client cores, Sierra Forest and other Xeons without AVX-512), or
// AVX512_VNNI + VL where the avx2 level is forced on a CPU with AVX-512 VNNI.
enum class Int8Dot : int { kNone = 0, kVnni256 = 1, kVnni512 = 2 };

// What the CPU (and its OS) supports: AVX512_VNNI with the avx512 level's features; AVX-VNNI.
bool cpu_has_avx512_vnni();
bool cpu_has_avx_vnni();

// The dot product the INT8 kernels use at ISA level `level` (active_isa()): the widest this CPU has
// within the level's vectors, or kNone when the environment variable SPARSEBERT_VNNI is 0 (read on
// every call, like SPARSEBERT_ISA, so tests run the kernels of CPUs without VNNI: only below the
// avx512bf16 level, since every CPU of that level has AVX512_VNNI). Raises on any other value.
Int8Dot active_int8_dot(Isa level);

const char* int8_dot_name(Int8Dot dot);

}  // namespace sparsebert
