// bsr_linear bf16 with AMX (compiled with -mamx-tile -mamx-bf16 and the AVX-512 flags).
//
// One TDPBF16PS multiplies a 16 x kstep tile of x by a kstep x 16 tile of weights into a 16 x 16
// fp32 tile: 16 * 16 * kstep multiply-adds, 16x what one vdpbf16ps does. The k-pair packing of
// the weights (csrc/cpu/bsr_linear_kernel.h) is already the B-tile layout: row kk of a B tile is
// 16 pairs (W[n, 2kk], W[n, 2kk+1]), 64 bytes, and the next row lies br pairs further. Rows of x
// load directly as A tiles (kstep bf16 each, row stride lda).
//
// Tiles: C 0..3 = (2 row tiles) x (2 output tiles) = 32 rows x 32 outputs, A 4..5, B 6..7.
// Shapes: br a multiple of 16, bc even and <= 32 or a multiple of 32, K a multiple of the
// k step (so no A tile reads past a row), whole 16-row tiles; the caller checks the shape
// (amx_eligible in bsr_linear.cpp) and the rows past the last whole tile go to the AVX-512
// BF16 kernel.
#include "avx512_traits.h"

namespace sparsebert {
namespace cpu {
namespace {

struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

void amx_rows(const BsrLinearArgs& a, int64_t rb0, int64_t rb1, int64_t m0, int64_t m1) {
  const uint16_t* x = static_cast<const uint16_t*>(a.x);
  const uint16_t* values = static_cast<const uint16_t*>(a.values);
  uint16_t* y = static_cast<uint16_t*>(a.y);
  const int br = a.br, bc = a.bc;
  const int kstep = bc < 32 ? bc : 32;
  const int ksteps = bc / kstep;
  const int64_t KB = bc / 2;
  const int64_t block_stride = KB * br * 2;
  const int64_t lda_bytes = a.lda * 2, w_row_bytes = int64_t(br) * 4;

  TileConfig cfg;
  for (int t = 0; t < 4; ++t) { cfg.rows[t] = 16; cfg.colsb[t] = 64; }
  for (int t = 4; t < 6; ++t) { cfg.rows[t] = 16; cfg.colsb[t] = static_cast<uint16_t>(kstep * 2); }
  for (int t = 6; t < 8; ++t) { cfg.rows[t] = static_cast<uint8_t>(kstep / 2); cfg.colsb[t] = 64; }
  _tile_loadconfig(&cfg);

  alignas(64) float acc[32 * 32];  // C tiles written back: [row][output], 128-byte rows
  for (int64_t m = m0; m < m1; m += 32) {
    const bool two_m = m1 - m >= 32;
    const uint16_t* xm = x + m * a.lda;
    for (int64_t rb = rb0; rb < rb1; ++rb) {
      const int64_t n0 = rb * br;
      const int n_valid = static_cast<int>(min_i64(br, a.N - n0));
      const int64_t first = a.crow[rb], nblk = a.crow[rb + 1] - first;
      for (int lane0 = 0; lane0 < n_valid; lane0 += 32) {
        const bool two_n = br - lane0 >= 32;
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
        for (int64_t i = 0; i < nblk; ++i) {
          const uint16_t* xb = xm + int64_t(a.col[first + i]) * bc;
          const uint16_t* wb = values + (first + i) * block_stride + int64_t(lane0) * 2;
          for (int s = 0; s < ksteps; ++s) {
            const uint16_t* xs = xb + s * kstep;
            const uint16_t* ws = wb + int64_t(s) * (kstep / 2) * br * 2;
            _tile_loadd(4, xs, lda_bytes);
            _tile_loadd(6, ws, w_row_bytes);
            _tile_dpbf16ps(0, 4, 6);
            if (two_n) {
              _tile_loadd(7, ws + 32, w_row_bytes);
              _tile_dpbf16ps(1, 4, 7);
            }
            if (two_m) {
              _tile_loadd(5, xs + 16 * a.lda, lda_bytes);
              _tile_dpbf16ps(2, 5, 6);
              if (two_n) _tile_dpbf16ps(3, 5, 7);
            }
          }
        }
        _tile_stored(0, acc, 128);
        _tile_stored(1, acc + 16, 128);
        _tile_stored(2, acc + 16 * 32, 128);
        _tile_stored(3, acc + 16 * 32 + 16, 128);
        // Epilogue: bias, round to bf16 (same rounding as every other path), valid outputs only.
        const int lanes = n_valid - lane0 < 32 ? n_valid - lane0 : 32;
        const __mmask16 k0 = avx512_mask(lanes), k1 = avx512_mask(lanes - 16);
        const __m512 b0 = a.bias ? _mm512_maskz_loadu_ps(k0, a.bias + n0 + lane0) : _mm512_setzero_ps();
        const __m512 b1 = a.bias ? _mm512_maskz_loadu_ps(k1, a.bias + n0 + lane0 + 16) : _mm512_setzero_ps();
        const int rows = two_m ? 32 : 16;
        for (int r = 0; r < rows; ++r) {
          uint16_t* yr = y + (m + r) * a.ldy + n0 + lane0;
          store_bf16x16(yr, _mm512_add_ps(_mm512_load_ps(acc + r * 32), b0), k0);
          if (lanes > 16) store_bf16x16(yr + 16, _mm512_add_ps(_mm512_load_ps(acc + r * 32 + 16), b1), k1);
        }
      }
    }
  }
  _tile_release();
}

}  // namespace

void bsr_linear_bf16_amx(const BsrLinearArgs& a, int64_t rb0, int64_t rb1, int64_t m0, int64_t m1) {
  const int64_t whole = m0 + (m1 - m0) / 16 * 16;
  if (whole > m0) amx_rows(a, rb0, rb1, m0, whole);
  if (whole < m1) bsr_linear_bf16_avx512bf16(a, rb0, rb1, whole, m1);
}

}  // namespace cpu
}  // namespace sparsebert
