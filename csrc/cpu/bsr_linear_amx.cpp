// bsr_linear (bf16) and bsr_int8_linear with AMX tiles (compiled with -mamx-tile -mamx-bf16
// -mamx-int8 and the AVX-512 flags).
//
// One tile multiply takes a 16 x kstep tile of x (A) and a kstep x 16 tile of weights (B) into
// a 16 x 16 fp32/int32 tile (C): 16x the work of one vdpbf16ps / vpdpbusd. The k-pair (bf16) and
// k-quad (int8) packings of the weights (csrc/cpu/bsr_linear_kernel.h) are already the B-tile
// layout: row kk of a B tile is 16 lanes of (W[n, kp*kk], ..., W[n, kp*kk + kp-1]), 64 bytes,
// and the next row lies br lanes further. Rows of x (bf16, or the quantized u8 buffer) load
// directly as A tiles, kstep * element bytes = 64 bytes at most.
//
// Tiles: C 0..3 = (2 row tiles) x (2 output tiles) = 32 rows x 32 outputs, A 4..5, B 6..7.
// The caller checks the shape (amx_eligible / amx_int8_eligible in the dispatchers): br a
// multiple of 16, bc a multiple of kp with bc <= kstep or bc a multiple of kstep, and A tiles
// that never read past a row of x. Rows past the last whole 16-row tile go to the AVX-512 kernel
// of the same op.
#include "amx_tiles.h"
#include "avx512_traits.h"

namespace sparsebert {
namespace cpu {
namespace {

// GCC's tile intrinsics are macros that paste their tile numbers into the assembly, so each
// (C, A, B) triple the driver uses is spelled out with literals.
#define SPARSEBERT_AMX_DOTS(OP)              \
  static void dot_0_4_6() { OP(0, 4, 6); } \
  static void dot_1_4_7() { OP(1, 4, 7); } \
  static void dot_2_5_6() { OP(2, 5, 6); } \
  static void dot_3_5_7() { OP(3, 5, 7); }

// bf16 in, bf16 out: TDPBF16PS, fp32 accumulators; bias added in the epilogue.
struct AmxBf16 {
  using xelem = uint16_t;
  using welem = uint16_t;
  using yelem = uint16_t;
  using acc_elem = float;
  static constexpr int KP = 2, KSTEP = 32;  // 32 bf16 = 64 bytes per A-tile row
  SPARSEBERT_AMX_DOTS(_tile_dpbf16ps)
  // What the epilogue needs of 16 outputs, loaded once for every row of a tile.
  struct Cols {
    __m512 bias;
    bool has_bias;
  };
  static Cols cols(const BsrLinearArgs& a, int64_t n, __mmask16 k) {
    return {a.bias ? _mm512_maskz_loadu_ps(k, a.bias + n) : _mm512_setzero_ps(), a.bias != nullptr};
  }
  template <bool>
  static void epilogue(uint16_t* y, const float* acc, __mmask16 k, const Cols& c, const BsrLinearArgs&, int64_t) {
    __m512 v = _mm512_load_ps(acc);
    if (c.has_bias) v = _mm512_add_ps(v, c.bias);
    store_bf16x16(y, v, k);
  }
};

// Quantized u8 activations times s8 weights: TDPBUSD, int32 accumulators; the epilogue of the
// VNNI kernel (zero-point correction, scales, bias, activation).
template <class Y>
struct AmxInt8 {
  using xelem = uint8_t;
  using welem = int8_t;
  using yelem = Y;
  using acc_elem = int32_t;
  static constexpr int KP = 4, KSTEP = 64;  // 64 int8 = 64 bytes per A-tile row
  SPARSEBERT_AMX_DOTS(_tile_dpbusd)
  // sum: the weight sums, times 128 where every row's zero point is 128 (BsrLinearArgs::symmetric,
  // the default per-token mode): the correction is then one subtraction per 16 outputs instead of
  // a broadcast, a vpmulld (two uops on port 0) and the subtraction. The epilogue runs between
  // tile multiplies, which wait for it: on BERT-base 768->3072 it was a third of the layer's time.
  struct Cols {
    __m512i sum;
    __m512 scale, bias;
    bool has_bias, gelu;
  };
  static Cols cols(const BsrLinearArgs& a, int64_t n, __mmask16 k) {
    const __m512i sum = _mm512_maskz_loadu_epi32(k, a.col_sum + n);
    return {a.symmetric ? _mm512_slli_epi32(sum, 7) : sum, _mm512_maskz_loadu_ps(k, a.col_scale + n),
            a.bias ? _mm512_maskz_loadu_ps(k, a.bias + n) : _mm512_setzero_ps(), a.bias != nullptr,
            a.activation == kActGelu};
  }
  template <bool Symmetric>
  static void epilogue(Y* y, const int32_t* acc, __mmask16 k, const Cols& c, const BsrLinearArgs& a, int64_t m) {
    const __m512i corr = _mm512_sub_epi32(
        _mm512_load_si512(acc), Symmetric ? c.sum : _mm512_mullo_epi32(c.sum, _mm512_set1_epi32(a.row_zero[m])));
    __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(corr), _mm512_set1_ps(a.row_scale[m]));
    v = _mm512_mul_ps(v, c.scale);
    if (c.has_bias) v = _mm512_add_ps(v, c.bias);
    if (c.gelu) v = vgelu(v);
    store_f32x16(y, v, k);
  }
};

// The epilogue of one unit: rows [m, m + rows) and outputs [n, n + lanes) (lanes <= 32) from acc
// (the C tiles written back, [row][output]) into y.
template <class P, bool Symmetric>
inline void amx_epilogue(const BsrLinearArgs& a, typename P::yelem* y, const typename P::acc_elem* acc, int64_t m,
                         int rows, int64_t n, int lanes) {
  typename P::yelem* y0 = y + m * a.ldy + n;
  const __mmask16 k0 = avx512_mask(lanes), k1 = avx512_mask(lanes - 16);
  const typename P::Cols c0 = P::cols(a, n, k0);
  if (lanes > 16) {
    const typename P::Cols c1 = P::cols(a, n + 16, k1);
    for (int r = 0; r < rows; ++r) {
      typename P::yelem* yr = y0 + r * a.ldy;
      P::template epilogue<Symmetric>(yr, acc + r * 32, k0, c0, a, m + r);
      P::template epilogue<Symmetric>(yr + 16, acc + r * 32 + 16, k1, c1, a, m + r);
    }
  } else {
    for (int r = 0; r < rows; ++r) P::template epilogue<Symmetric>(y0 + r * a.ldy, acc + r * 32, k0, c0, a, m + r);
  }
}

template <class P>
void amx_rows(const BsrLinearArgs& a, int64_t rb0, int64_t rb1, int64_t m0, int64_t m1) {
  using XE = typename P::xelem;
  using WE = typename P::welem;
  using YE = typename P::yelem;
  const XE* x = static_cast<const XE*>(a.x);
  const WE* values = static_cast<const WE*>(a.values);
  YE* y = static_cast<YE*>(a.y);
  const int br = a.br, bc = a.bc;
  const int kstep = bc < P::KSTEP ? bc : P::KSTEP;  // inputs per A-tile row
  const int ksteps = bc / kstep;
  const int64_t block_stride = int64_t(bc / P::KP) * br * P::KP;
  const int64_t lda_bytes = a.lda * int64_t(sizeof(XE)), w_row_bytes = int64_t(br) * 4;
  // Every output is stored through the caches, BsrLinearArgs::stream_y or not: streamed, the
  // layer alone ran faster (BERT-base 768->3072 at 90% 32x32 INT8, 1024 rows, 12 MiB of fp32
  // outputs: 0.55 ms a call against 0.78), but whole BERT-base forwards at 8x128 ran slower (dense
  // INT8 97 ms against 88, 90% 32x32 INT8 53 against 50; Xeon with AMX and a large L3, 2 threads,
  // alternating in one process): the next op reads y back from DRAM instead of L3. Prefetching
  // the weights 1 or 2 k steps ahead into L1 gained nothing either, nor did the other loop order
  // (rows of x in panels of 384 KiB, every block row passing over a whole panel while the next
  // block row's weights are prefetched to L2): dense 768->3072 / 3072->768 at 128 rows with
  // cold weights 0.304-0.321 / 0.317-0.332 ms against 0.313-0.325 / 0.304-0.339 this way.
  // Where the time goes (probes removing one part each, a loop of one dense layer, 2 threads, Xeon
  // with AMX; ns per tile multiply per thread, the loaded peak of peak_ops being 5.6): 768->3072 at
  // 128 rows 19.2 as built, 12.7 without the epilogue, 9.6 with the B tiles also from one fixed
  // address; the epilogue into a block of L1 instead of y 16.5-17.8 where as built took 22-23 in
  // that (slower) phase. So with 768 inputs the epilogue is a third of the layer, mostly its stores
  // into y. 3072->768: 20.3 as built, 19.0 without the epilogue, 14.4 with fixed B tiles too (the
  // quantizer, before this kernel, is a fifth of the op there). Not kept: prefetchw of the next
  // unit's lines of y during the tile multiplies (2-10% slower), unmasked stores of whole vectors
  // (slower), an L2 prefetch of the weights 4-16 KiB ahead on the first pass over them (48
  // BERT-base layers in sequence at 128 rows 9.1-9.8 ms against 9.5-9.7: none).

  TileConfig cfg;
  for (int t = 0; t < 4; ++t) { cfg.rows[t] = 16; cfg.colsb[t] = 64; }
  for (int t = 4; t < 6; ++t) { cfg.rows[t] = 16; cfg.colsb[t] = static_cast<uint16_t>(kstep * sizeof(XE)); }
  for (int t = 6; t < 8; ++t) { cfg.rows[t] = static_cast<uint8_t>(kstep / P::KP); cfg.colsb[t] = 64; }
  _tile_loadconfig(&cfg);

  alignas(64) typename P::acc_elem acc[32 * 32];  // C tiles written back: [row][output]
  for (int64_t m = m0; m < m1; m += 32) {
    const bool two_m = m1 - m >= 32;
    const XE* xm = x + m * a.lda;
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
          const XE* xb = xm + int64_t(a.col[first + i]) * bc;
          const WE* wb = values + (first + i) * block_stride + int64_t(lane0) * P::KP;
          for (int s = 0; s < ksteps; ++s) {
            const XE* xs = xb + s * kstep;
            const WE* ws = wb + int64_t(s) * (kstep / P::KP) * br * P::KP;
            _tile_loadd(4, xs, lda_bytes);
            _tile_loadd(6, ws, w_row_bytes);
            P::dot_0_4_6();
            if (two_n) {
              _tile_loadd(7, ws + 16 * P::KP, w_row_bytes);
              P::dot_1_4_7();
            }
            if (two_m) {
              _tile_loadd(5, xs + 16 * a.lda, lda_bytes);
              P::dot_2_5_6();
              if (two_n) P::dot_3_5_7();
            }
          }
        }
        _tile_stored(0, acc, 128);
        _tile_stored(1, acc + 16, 128);
        _tile_stored(2, acc + 16 * 32, 128);
        _tile_stored(3, acc + 16 * 32 + 16, 128);
        const int lanes = n_valid - lane0 < 32 ? n_valid - lane0 : 32;
        const int rows = two_m ? 32 : 16;
        if (a.symmetric)
          amx_epilogue<P, true>(a, y, acc, m, rows, n0 + lane0, lanes);
        else
          amx_epilogue<P, false>(a, y, acc, m, rows, n0 + lane0, lanes);
      }
    }
  }
  _tile_release();
}

// Whole 16-row tiles on AMX, the rest with `rest`.
template <class P>
void amx_then(const BsrLinearArgs& a, int64_t rb0, int64_t rb1, int64_t m0, int64_t m1, BsrLinearFn rest) {
  const int64_t whole = m0 + (m1 - m0) / 16 * 16;
  if (whole > m0) amx_rows<P>(a, rb0, rb1, m0, whole);
  if (whole < m1) rest(a, rb0, rb1, whole, m1);
}

}  // namespace

void bsr_linear_bf16_amx(const BsrLinearArgs& a, int64_t rb0, int64_t rb1, int64_t m0, int64_t m1) {
  amx_then<AmxBf16>(a, rb0, rb1, m0, m1, bsr_linear_bf16_avx512bf16);
}

void bsr_int8_linear_f32_amx(const BsrLinearArgs& a, int64_t rb0, int64_t rb1, int64_t m0, int64_t m1) {
  amx_then<AmxInt8<float>>(a, rb0, rb1, m0, m1, bsr_int8_linear_f32_avx512vnni);
}

void bsr_int8_linear_bf16_amx(const BsrLinearArgs& a, int64_t rb0, int64_t rb1, int64_t m0, int64_t m1) {
  amx_then<AmxInt8<uint16_t>>(a, rb0, rb1, m0, m1, bsr_int8_linear_bf16_avx512vnni);
}

}  // namespace cpu
}  // namespace sparsebert
