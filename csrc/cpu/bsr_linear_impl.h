// The micro-kernel and driver of every linear op (bsr_linear, the INT8 ops), written once over a
// "vector traits" type T and instantiated by each ISA translation unit (scalar, AVX2, AVX-512,
// AVX-512 BF16, AVX-512 VNNI) for fp32, bf16, int8 and weight-only int8 operands.
//
// Include only from the ISA files (bsr_*_<isa>.cpp): everything here has internal linkage so each
// instantiation keeps the instruction set of the file that compiled it.
//
// A traits type T provides:
//   xelem, welem, yelem   storage types of x, values and y (float; uint16_t bf16 bits; for int8
//                  uint8_t quantized x, int8_t weights, float or bf16 out)
//   kQuantized     false: acc starts at the bias and store() writes it; true: acc starts at 0
//                  and store_q() dequantizes (per-row and per-column scales) and adds the bias
//                  (weight-only int8: no row scale, no zero-point sum) and then, if asked, the
//                  GELU; cols_t / load_cols() hold one vector's per-output factors (scale,
//                  weight sum, bias) and the GELU flag, loaded once per tile and passed to
//                  store_q() for each row
//   kWholeGroups   true: x is a padded buffer, so a partial last group of KP inputs is read
//                  whole (its weights are zero); false: the tail is read with load_x_single
//   VL             output features per vector;  KP  k values per packed lane (1 fp32, 2 bf16,
//                  4 int8)
//   NVMAX          vectors of outputs one tile covers (NVMAX * VL outputs of a block row)
//   mr_max(nv)     rows of x one tile covers: MR * NV accumulators + NV weight vectors + one
//                  broadcast must fit the register file (32 zmm, 16 ymm), else the tile spills
//   acc_t, w_t, x_t and load_bias / load_w / load_x / load_x_single / fma / store
//   VL, mask_t, mask(lanes), stream_fence()  from its ISA's lanes base (ScalarLanes below,
//                  Avx2Lanes, Avx512Lanes); store / store_q take a `stream` flag (Tile::stream)
//                  that a traits type may ignore
#pragma once

#include <cstdint>
#include <cstring>

#include "bf16_bits.h"
#include "bsr_linear_kernel.h"

namespace sparsebert {
namespace cpu {
namespace {

inline int64_t min_i64(int64_t a, int64_t b) { return a < b ? a : b; }

// What every scalar traits type shares: one lane, "masked" by whether it exists.
struct ScalarLanes {
  static constexpr int VL = 1;
  using mask_t = bool;
  static mask_t mask(int lanes) { return lanes > 0; }
  static void stream_fence() {}  // no streaming stores here: stream_y is a hint they ignore
};

// One register tile: MR rows of x times up to NV * VL outputs of one block row.
template <class T>
struct Tile {
  using XE = typename T::xelem;
  using WE = typename T::welem;
  using YE = typename T::yelem;
  const XE* x;             // row 0 of the tile, column 0
  int64_t lda;
  const WE* vals;          // first stored block of the block row, already offset by `lane0`
  int64_t block_stride;    // elements per stored block: KB * br * KP
  const int32_t* cols;     // block-column indices of the block row
  int64_t nblk;
  int64_t K;
  int bc, br;
  int lanes;               // valid outputs in this tile (<= NV * VL)
  const float* bias;       // offset to the tile's first output, or nullptr
  YE* y;                   // row 0 of the tile, first output
  int64_t ldy;
  bool prefetch;           // first pass over these weights: they may still be in DRAM
  bool stream;             // whole vectors of y go out with non-temporal stores (stream_y)
  bool gelu;               // quantized traits: GELU after the bias (activation == kActGelu)
  // Quantized traits only, offset to the tile's first row / output: per-row activation scale,
  // per-output weight scale and sum of quantized weights (the u8 zero-point correction).
  const float* row_scale;
  const int32_t* row_zero;
  const float* col_scale;
  const int32_t* col_sum;
};

// How far ahead of the weights being read the k loop prefetches. Measured on AMD Zen 4, dense
// INT8 BERT-base FFN shapes, cold weights, 1 thread: a whole next block prefetched at once gave
// 164-208 us at M=1 and 242-274 us at M=8; 4 to 8 KiB ahead inside the k loop, 99-135 and
// 119-152 us (6 KiB: 112-130 and 126-149).
constexpr int64_t kPrefetchBytes = 6 * 1024;

template <class T, int MR, int NV>
void tile_kernel(const Tile<T>& t) {
  using XE = typename T::xelem;
  using WE = typename T::welem;
  using acc_t = typename T::acc_t;
  constexpr int VL = T::VL;
  constexpr int KP = T::KP;
  // Everything the loops read is copied to locals first: GCC then keeps the accumulators in
  // registers across the k loop instead of storing them to the stack at every step.
  const XE* __restrict x = t.x;
  const int64_t lda = t.lda;
  const WE* __restrict vals = t.vals;
  const int32_t* __restrict cols = t.cols;
  const int64_t nblk = t.nblk, K = t.K, block_stride = t.block_stride;
  const int bc = t.bc, br = t.br;
  typename T::mask_t mask[NV];
  for (int v = 0; v < NV; ++v) mask[v] = T::mask(t.lanes - v * VL);

  // Every loop over the accumulators is unrolled completely: one access with a run-time index
  // and GCC keeps the whole array in memory, storing it at every k step.

  acc_t acc[MR][NV];
#pragma GCC unroll 4
  for (int v = 0; v < NV; ++v) {
    acc_t b = T::zero();  // quantized traits add the bias in store_q, after dequantizing
    if constexpr (!T::kQuantized)
      if (t.bias) b = T::load_bias(t.bias + v * VL, mask[v]);
#pragma GCC unroll 16
    for (int m = 0; m < MR; ++m) acc[m][v] = b;
  }

  for (int64_t i = 0; i < nblk; ++i) {
    const int64_t k0 = static_cast<int64_t>(cols[i]) * bc;
    // Columns of this block that exist in x: the last block column may hang past K, and its
    // padded weights are zero, so stopping at K is exact and never reads past a row of x.
    const int kn = static_cast<int>(min_i64(bc, K - k0));
    const XE* xb = x + k0;
    const WE* wb = vals + i * block_stride;
    if (i + 1 < nblk) {
      // The rows of x at the next block's columns, a line per row of the tile: a block column
      // of its own that no hardware prefetcher guesses. Asked for while this block computes,
      // they are in L1 when it starts (INT8 3072->768 at 90% 32x32, 1024 rows, Zen 4: 12%
      // faster; 768-wide inputs, whose rows the L1 holds anyway: no change).
      const XE* xn = x + static_cast<int64_t>(cols[i + 1]) * bc;
#pragma GCC unroll 16
      for (int m = 0; m < MR; ++m) __builtin_prefetch(xn + m * lda, 0, 3);
    }
    const int full = T::kWholeGroups ? (kn + KP - 1) / KP : kn / KP;
    for (int kk = 0; kk < full; ++kk) {
      if (t.prefetch) {
        // Weights stream from DRAM on the first pass of a cold layer, and the blocks this tile
        // and the next block rows read lie one after the other: each k step asks L2 for the
        // lines kPrefetchBytes ahead of the ones it reads, so that enough misses are in flight
        // (one core's demand misses alone reach ~8-12 GB/s here).
        constexpr int kStep = NV * VL * KP * int(sizeof(WE));  // weight bytes per k step
        const char* ahead = reinterpret_cast<const char*>(wb + int64_t(kk) * br * KP) + kPrefetchBytes;
#pragma GCC unroll 4
        for (int off = 0; off < kStep; off += 64) __builtin_prefetch(ahead + off, 0, 2);
      }
      typename T::w_t w[NV];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) w[v] = T::load_w(wb + (int64_t(kk) * br + v * VL) * KP, mask[v]);
#pragma GCC unroll 16
      for (int m = 0; m < MR; ++m) {
        const auto xv = T::load_x(xb + m * lda + kk * KP);
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[m][v] = T::fma(acc[m][v], w[v], xv);
      }
    }
    if (!T::kWholeGroups && KP == 2 && (kn & 1)) {
      // Odd tail: the pair's second input lies outside the block (odd bc) or past K. Its
      // weight is zero, but x there may be Inf or NaN (or not exist), so it is not read: the
      // broadcast carries a zero in its place.
      typename T::w_t w[NV];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) w[v] = T::load_w(wb + (int64_t(full) * br + v * VL) * KP, mask[v]);
#pragma GCC unroll 16
      for (int m = 0; m < MR; ++m) {
        const auto xv = T::load_x_single(xb + m * lda + full * KP);
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[m][v] = T::fma(acc[m][v], w[v], xv);
      }
    }
  }

  if constexpr (T::kQuantized) {
    // The per-row factors are read before any store (y may alias them as far as the compiler
    // knows), and each vector of per-output factors once per tile, not once per row.
    float row_scale[MR];
    int32_t row_zero[MR];
#pragma GCC unroll 16
    for (int m = 0; m < MR; ++m) {
      row_scale[m] = t.row_scale ? t.row_scale[m] : 1.f;
      row_zero[m] = t.row_zero ? t.row_zero[m] : 0;
    }
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      const typename T::cols_t c = T::load_cols(mask[v], t.col_scale + v * VL, t.col_sum ? t.col_sum + v * VL : nullptr,
                                                t.bias ? t.bias + v * VL : nullptr, t.gelu);
#pragma GCC unroll 16
      for (int m = 0; m < MR; ++m) T::store_q(t.y + m * t.ldy + v * VL, acc[m][v], mask[v], row_scale[m], row_zero[m], c, t.stream);
    }
  } else {
#pragma GCC unroll 16
    for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) T::store(t.y + m * t.ldy + v * VL, acc[m][v], mask[v], t.stream);
  }
}

// rows -> tile_kernel<T, rows, NV>, so a tail of rows runs in one pass with a smaller tile.
template <class T, int NV, int MR = 1>
inline void tile_rows(int rows, const Tile<T>& t) {
  if constexpr (MR <= T::mr_max(NV)) {
    if (rows == MR) return tile_kernel<T, MR, NV>(t);
    tile_rows<T, NV, MR + 1>(rows, t);
  }
}

template <class T, int NV = 1>
inline void tile_dispatch(int nv, int rows, const Tile<T>& t) {
  if constexpr (NV <= T::NVMAX) {
    if (nv == NV) return tile_rows<T, NV>(rows, t);
    tile_dispatch<T, NV + 1>(nv, rows, t);
  }
}

// x rows kept in L2 while every block row of the range passes over them. 256 KiB is a quarter
// of the smallest L2 this targets (1 MiB, Zen 4), leaving room for the block row's weights.
constexpr int64_t kXChunkBytes = 256 * 1024;

template <class T>
void bsr_linear_impl(const BsrLinearArgs& a, int64_t rb0, int64_t rb1, int64_t m0, int64_t m1) {
  using XE = typename T::xelem;
  using WE = typename T::welem;
  using YE = typename T::yelem;
  constexpr int KP = T::KP;
  constexpr int TILE_LANES = T::VL * T::NVMAX;
  const XE* x = static_cast<const XE*>(a.x);
  const WE* values = static_cast<const WE*>(a.values);
  YE* y = static_cast<YE*>(a.y);
  const int KB = (a.bc + KP - 1) / KP;
  const int64_t block_stride = int64_t(KB) * a.br * KP;
  const int mr = T::mr_max(T::NVMAX);
  const int64_t row_bytes = (a.K > 0 ? a.K : 1) * int64_t(sizeof(XE));
  int64_t chunk = kXChunkBytes / row_bytes / mr * mr;
  if (chunk < mr) chunk = mr;

  for (int64_t c0 = m0; c0 < m1; c0 += chunk) {
    const int64_t c1 = min_i64(m1, c0 + chunk);
    for (int64_t rb = rb0; rb < rb1; ++rb) {
      const int64_t n0 = rb * a.br;
      const int n_valid = static_cast<int>(min_i64(a.br, a.N - n0));
      const int64_t first = a.crow[rb];
      Tile<T> t;
      t.lda = a.lda;
      t.block_stride = block_stride;
      t.cols = a.col + first;
      t.nblk = a.crow[rb + 1] - first;
      t.K = a.K;
      t.bc = a.bc;
      t.br = a.br;
      t.ldy = a.ldy;
      t.stream = a.stream_y;
      t.gelu = a.activation == kActGelu;
      for (int lane0 = 0; lane0 < n_valid; lane0 += TILE_LANES) {
        const int lanes = n_valid - lane0 < TILE_LANES ? n_valid - lane0 : TILE_LANES;
        const int nv = (lanes + T::VL - 1) / T::VL;
        t.lanes = lanes;
        t.vals = values + first * block_stride + int64_t(lane0) * KP;
        t.bias = a.bias ? a.bias + n0 + lane0 : nullptr;
        t.col_scale = a.col_scale ? a.col_scale + n0 + lane0 : nullptr;
        t.col_sum = a.col_sum ? a.col_sum + n0 + lane0 : nullptr;
        const int rows_max = T::mr_max(nv);
        for (int64_t m = c0; m < c1; m += rows_max) {
          const int rows = static_cast<int>(min_i64(rows_max, c1 - m));
          t.x = x + m * a.lda;
          t.y = y + m * a.ldy + n0 + lane0;
          t.prefetch = m == m0;
          t.row_scale = a.row_scale ? a.row_scale + m : nullptr;
          t.row_zero = a.row_zero ? a.row_zero + m : nullptr;
          tile_dispatch<T>(nv, rows, t);
        }
      }
    }
  }
  // Non-temporal stores are weakly ordered: fence them before another thread reads y.
  if (a.stream_y) T::stream_fence();
}

}  // namespace
}  // namespace cpu
}  // namespace sparsebert
