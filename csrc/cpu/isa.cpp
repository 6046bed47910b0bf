#include "isa.h"

#include <cstdlib>
#include <cstring>

#include <sys/syscall.h>
#include <unistd.h>

#include <c10/util/Exception.h>

namespace sparsebert {

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kScalar: return "scalar";
    case Isa::kAvx2: return "avx2";
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx512Bf16: return "avx512bf16";
    case Isa::kAmx: return "amx";
  }
  return "unknown";
}

namespace {

// Linux hands out the 8 KiB AMX tile state only to a process that asks (arch_prctl
// ARCH_REQ_XCOMP_PERM = 0x1023 for XFEATURE_XTILEDATA = 18); torch's oneDNN asks too, and
// asking twice is harmless. Compiled without ISA flags: this runs on every CPU.
bool amx_permitted() { return syscall(SYS_arch_prctl, 0x1023, 18) == 0; }

}  // namespace

Isa detected_isa() {
  // libgcc's __builtin_cpu_supports also checks that the OS saves the YMM/ZMM state (XCR0).
  static const Isa isa = [] {
    __builtin_cpu_init();
    const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
    const bool bf16 = avx512 && __builtin_cpu_supports("avx512bf16");
    if (bf16 && __builtin_cpu_supports("amx-tile") && __builtin_cpu_supports("amx-bf16") &&
        amx_permitted())
      return Isa::kAmx;
    if (bf16) return Isa::kAvx512Bf16;
    if (avx512) return Isa::kAvx512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::kAvx2;
    return Isa::kScalar;
  }();
  return isa;
}

Isa active_isa() {
  const Isa best = detected_isa();
  const char* env = std::getenv("SPARSEBERT_ISA");
  if (env == nullptr || env[0] == '\0') return best;
  Isa wanted;
  if (std::strcmp(env, "scalar") == 0) {
    wanted = Isa::kScalar;
  } else if (std::strcmp(env, "avx2") == 0) {
    wanted = Isa::kAvx2;
  } else if (std::strcmp(env, "avx512") == 0) {
    wanted = Isa::kAvx512;
  } else if (std::strcmp(env, "avx512bf16") == 0) {
    wanted = Isa::kAvx512Bf16;
  } else if (std::strcmp(env, "amx") == 0) {
    wanted = Isa::kAmx;
  } else {
    TORCH_CHECK_VALUE(false, "SPARSEBERT_ISA='", env,
                      "' is not an ISA level; use one of scalar, avx2, avx512, avx512bf16, amx");
  }
  TORCH_CHECK(static_cast<int>(wanted) <= static_cast<int>(best), "SPARSEBERT_ISA=", env,
              " was requested but this CPU supports at most ", isa_name(best));
  return wanted;
}

bool cpu_has_avx512_vnni() {
  static const bool has = [] {
    __builtin_cpu_init();
    return static_cast<int>(detected_isa()) >= static_cast<int>(Isa::kAvx512) &&
           __builtin_cpu_supports("avx512vnni");
  }();
  return has;
}

bool cpu_has_avx_vnni() {
  static const bool has = [] {
    __builtin_cpu_init();
    return static_cast<int>(detected_isa()) >= static_cast<int>(Isa::kAvx2) && __builtin_cpu_supports("avxvnni");
  }();
  return has;
}

Int8Dot active_int8_dot(Isa level) {
  const char* env = std::getenv("SPARSEBERT_VNNI");
  if (env != nullptr && env[0] != '\0') {
    TORCH_CHECK_VALUE(std::strcmp(env, "0") == 0 || std::strcmp(env, "1") == 0, "SPARSEBERT_VNNI='", env,
                      "' must be 0 (INT8 kernels without vpdpbusd) or 1 (what the CPU has: the default)");
    if (env[0] == '0') {
      TORCH_CHECK_VALUE(static_cast<int>(level) < static_cast<int>(Isa::kAvx512Bf16), "SPARSEBERT_VNNI=0 at the ",
                        isa_name(level), " level: every CPU of that level has AVX512_VNNI; force SPARSEBERT_ISA=",
                        "avx512 or lower with it");
      return Int8Dot::kNone;
    }
  }
  const int l = static_cast<int>(level);
  if (l >= static_cast<int>(Isa::kAvx512) && cpu_has_avx512_vnni()) return Int8Dot::kVnni512;
  if (l >= static_cast<int>(Isa::kAvx2) && (cpu_has_avx_vnni() || cpu_has_avx512_vnni())) return Int8Dot::kVnni256;
  return Int8Dot::kNone;
}

const char* int8_dot_name(Int8Dot dot) {
  switch (dot) {
    case Int8Dot::kNone: return "none";
    case Int8Dot::kVnni256: return cpu_has_avx_vnni() ? "avx-vnni" : "avx512-vnni-256";
    case Int8Dot::kVnni512: return "avx512-vnni";
  }
  return "unknown";
}

}  // namespace sparsebert
