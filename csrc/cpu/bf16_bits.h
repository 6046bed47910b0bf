// bf16 <-> fp32 conversion of single values, with torch's rounding. Header-only with internal
// linkage: included by the ISA translation units, each of which keeps its own copy.
#pragma once

#include <cstdint>
#include <cstring>

namespace sparsebert {
namespace cpu {
namespace {

// fp32 -> bf16 bits, round to nearest even, NaN -> quiet NaN: the same rounding as torch's
// `.to(torch.bfloat16)`, so every ISA path rounds identically.
inline uint16_t f32_to_bf16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

inline float bf16_bits_to_f32(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

}  // namespace
}  // namespace cpu
}  // namespace sparsebert
