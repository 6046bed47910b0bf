// AMX peaks: TDPBUSD (int8: 16 x 16 outputs, 64 u8 x s8 multiply-adds each) and TDPBF16PS (bf16:
// 32 per output) into four accumulator tiles, the register blocking of the AMX kernels
// (bsr_linear_amx.cpp), from two A and two B tiles loaded once. See peak_kernel.h. The caller
// runs these at the amx level only, where the OS has granted the tile state.
#include <immintrin.h>

#include <cstring>

#include "amx_tiles.h"
#include "peak_kernel.h"

namespace sparsebert {
namespace cpu {
namespace {

// Eight tiles of 16 rows x 64 bytes, as the kernels configure them, and the four accumulators
// (C 0..3) zeroed.
inline void start_tiles() {
  TileConfig cfg;
  for (int t = 0; t < 8; ++t) {
    cfg.rows[t] = 16;
    cfg.colsb[t] = 64;
  }
  _tile_loadconfig(&cfg);
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
}

// Releases the tiles after `iters` iterations of four tile multiplies: the operations done, and
// two accumulators' values as the sink that keeps the loop alive.
template <bool kInt8>
PeakResult finish_tiles(int64_t iters) {
  alignas(64) float out[16 * 16];
  float sink = 0;
  _tile_stored(0, out, 64);
  sink += kInt8 ? static_cast<float>(reinterpret_cast<int32_t*>(out)[0]) : out[0];
  _tile_stored(3, out, 64);
  sink += kInt8 ? static_cast<float>(reinterpret_cast<int32_t*>(out)[255]) : out[255];
  _tile_release();
  const double per_op = 16.0 * 16 * (kInt8 ? 64 : 32) * 2;
  return {double(iters) * 4 * per_op, sink};
}

// The products of 1 * 1 (int8) or 1.0 * 1.0 (bf16) stay exact for far more iterations than run:
// int32 wraps after 2^25 int8 iterations (64 per output each), and an fp32 sum of whole numbers
// stops growing at 2^24, which changes the sink but not the work.
template <bool kInt8>
PeakResult amx_peak(int64_t iters) {
  start_tiles();
  alignas(64) uint8_t ones[16 * 64];
  for (int i = 0; i < 16 * 64; ++i)
    ones[i] = kInt8 ? 1 : (i % 2 ? 0x3f : 0x80);  // int8 1, or the bf16 1.0 (0x3f80) little-endian
  _tile_loadd(4, ones, 64);
  _tile_loadd(5, ones, 64);
  _tile_loadd(6, ones, 64);
  _tile_loadd(7, ones, 64);
  for (int64_t it = 0; it < iters; ++it) {
    if constexpr (kInt8) {
      _tile_dpbusd(0, 4, 6);
      _tile_dpbusd(1, 4, 7);
      _tile_dpbusd(2, 5, 6);
      _tile_dpbusd(3, 5, 7);
    } else {
      _tile_dpbf16ps(0, 4, 6);
      _tile_dpbf16ps(1, 4, 7);
      _tile_dpbf16ps(2, 5, 6);
      _tile_dpbf16ps(3, 5, 7);
    }
  }
  return finish_tiles<kInt8>(iters);
}

}  // namespace

PeakResult peak_int8_amx(int64_t iters) { return amx_peak<true>(iters); }
PeakResult peak_bf16_amx(int64_t iters) { return amx_peak<false>(iters); }

// The same four TDPBUSD per iteration with the AMX INT8 kernel's loads between them: two A tiles
// (16 rows of 64 x bytes) and two B tiles (16 rows of 64 weight bytes, a 128-byte row stride as a
// 32-output block row has) loaded before the multiplies that read them, every iteration, from
// 8 KiB that stay in L1. What that register blocking can reach when nothing but its own tile
// loads holds it: on a Xeon with AMX (2026-12-06, 2 threads) 11.8 TOP/s against 13.8 for the
// multiplies alone. (Tile rows must lie on 64-byte lines: 16 bytes off, every row split over two
// lines, the same loop ran at about a third of the multiplies-only rate there.)
PeakResult peak_int8_amx_loaded(int64_t iters) {
  start_tiles();
  alignas(64) uint8_t x[4][32 * 64];  // four k steps of 32 rows: A tiles at rows 0 and 16
  alignas(64) int8_t w[4][16 * 128];  // four k steps of a 32-output block row: B tiles at 0 and 64
  std::memset(x, 1, sizeof x);
  std::memset(w, 1, sizeof w);
  for (int64_t it = 0; it < iters; ++it) {
    const uint8_t* xs = x[it & 3];
    const int8_t* ws = w[it & 3];
    _tile_loadd(4, xs, 64);
    _tile_loadd(6, ws, 128);
    _tile_dpbusd(0, 4, 6);
    _tile_loadd(7, ws + 64, 128);
    _tile_dpbusd(1, 4, 7);
    _tile_loadd(5, xs + 16 * 64, 64);
    _tile_dpbusd(2, 5, 6);
    _tile_dpbusd(3, 5, 7);
  }
  return finish_tiles<true>(iters);
}

}  // namespace cpu
}  // namespace sparsebert
