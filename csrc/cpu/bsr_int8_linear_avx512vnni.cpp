// INT8 bsr_linear with AVX-512 VNNI (compiled with -mavx512vnni and the AVX-512 flags), and
// the AVX-512 activation quantizer.
//
// vpdpbusd multiplies the four u8 of each 32-bit lane of the broadcast activations by the four
// s8 weights of the lane (one output, four consecutive inputs: the k-quad packing) and adds the
// four products to the int32 accumulator, exactly: 64 multiply-adds per instruction. u8 x s8
// needs unsigned activations: they are stored with the row's zero point (q + 128 when
// symmetric) and the epilogue subtracts zero * sum_k w[n, k] (the sum precomputed at pack
// time). No int16 step, so no saturation (the vpmaddubsw trap): each int32 sum is exact for
// K < 2^31 / (255 * 128).
#include "avx512_traits.h"
#include "quantize_params.h"

namespace sparsebert {
namespace cpu {
namespace {

template <class Y>
struct Avx512Int8Vnni : Avx512Lanes {
  using xelem = uint8_t;
  using welem = int8_t;
  using yelem = Y;
  static constexpr bool kQuantized = true, kWholeGroups = true;
  static constexpr int KP = 4, NVMAX = 2;
  static constexpr int mr_max(int nv) { return avx512_mr_max(nv); }
  using acc_t = __m512i;
  using w_t = __m512i;
  using x_t = __m512i;
  static acc_t zero() { return _mm512_setzero_si512(); }
  static w_t load_w(const int8_t* p, mask_t k) { return _mm512_maskz_loadu_epi32(k, p); }
  static x_t load_x(const uint8_t* p) {
    uint32_t quad;
    std::memcpy(&quad, p, 4);
    return _mm512_set1_epi32(static_cast<int>(quad));
  }
  static x_t load_x_single(const uint8_t* p) { return load_x(p); }
  static acc_t fma(acc_t a, w_t w, x_t x) { return _mm512_dpbusd_epi32(a, x, w); }
  // One vector of outputs' factors; sum128 = 128 * col_sum, the correction of every row
  // quantized symmetrically (zero point 128), so those rows need no multiply.
  struct cols_t {
    __m512i sum, sum128;
    __m512 scale, bias;
    bool has_bias, gelu;
  };
  static cols_t load_cols(mask_t k, const float* col_scale, const int32_t* col_sum, const float* bias, bool gelu) {
    const __m512i sum = _mm512_maskz_loadu_epi32(k, col_sum);
    return {sum, _mm512_slli_epi32(sum, 7), _mm512_maskz_loadu_ps(k, col_scale),
            bias ? _mm512_maskz_loadu_ps(k, bias) : _mm512_setzero_ps(), bias != nullptr, gelu};
  }
  // acc (int32) -> (acc - row_zero * col_sum) * row_scale * col_scale + bias, stored as Y (the
  // int32 product wraps alike either way: 128 * s and s << 7 have the same low 32 bits).
  static void store_q(Y* p, acc_t a, mask_t k, float row_scale, int32_t row_zero, const cols_t& c, bool stream) {
    const __m512i zs = row_zero == 128 ? c.sum128 : _mm512_mullo_epi32(c.sum, _mm512_set1_epi32(row_zero));
    __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(a, zs)), _mm512_set1_ps(row_scale));
    v = _mm512_mul_ps(v, c.scale);
    if (c.has_bias) v = _mm512_add_ps(v, c.bias);
    if (c.gelu) v = vgelu(v);
    store_f32x16(p, v, k, stream);
  }
};

// Weight-only: 16 int8 weights of one input widened to fp32, FMA with the broadcast input.
template <class X, class Y>
struct Avx512WeightOnly : Avx512Lanes {
  using xelem = X;
  using welem = int8_t;
  using yelem = Y;
  static constexpr bool kQuantized = true, kWholeGroups = false;
  static constexpr int KP = 1, NVMAX = 2;
  static constexpr int mr_max(int nv) { return avx512_mr_max(nv); }
  using acc_t = __m512;
  using w_t = __m512;
  using x_t = __m512;
  static acc_t zero() { return _mm512_setzero_ps(); }
  static w_t load_w(const int8_t* p, mask_t k) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(k, p)));
  }
  static x_t load_x(const X* p) {
    if constexpr (sizeof(X) == 2) return _mm512_set1_ps(bf16_bits_to_f32(*p));
    else return _mm512_set1_ps(*p);
  }
  static x_t load_x_single(const X* p) { return load_x(p); }
  static acc_t fma(acc_t a, w_t w, x_t x) { return _mm512_fmadd_ps(w, x, a); }
  struct cols_t {
    __m512 scale, bias;
    bool has_bias, gelu;
  };
  static cols_t load_cols(mask_t k, const float* col_scale, const int32_t*, const float* bias, bool gelu) {
    return {_mm512_maskz_loadu_ps(k, col_scale), bias ? _mm512_maskz_loadu_ps(k, bias) : _mm512_setzero_ps(),
            bias != nullptr, gelu};
  }
  static void store_q(Y* p, acc_t a, mask_t k, float, int32_t, const cols_t& c, bool stream) {
    __m512 v = _mm512_mul_ps(a, c.scale);
    if (c.has_bias) v = _mm512_add_ps(v, c.bias);
    if (c.gelu) v = vgelu(v);
    store_f32x16(p, v, k, stream);
  }
};

inline __m512 load16(const void* x, bool bf16, int64_t i, __mmask16 k) {
  if (bf16) {
    const __m256i h = _mm256_maskz_loadu_epi16(k, static_cast<const uint16_t*>(x) + i);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
  return _mm512_maskz_loadu_ps(k, static_cast<const float*>(x) + i);
}

}  // namespace

void bsr_int8_linear_f32_avx512vnni(const BsrLinearArgs& a, int64_t rb0, int64_t rb1, int64_t m0, int64_t m1) {
  bsr_linear_impl<Avx512Int8Vnni<float>>(a, rb0, rb1, m0, m1);
}

void bsr_int8_linear_bf16_avx512vnni(const BsrLinearArgs& a, int64_t rb0, int64_t rb1, int64_t m0, int64_t m1) {
  bsr_linear_impl<Avx512Int8Vnni<uint16_t>>(a, rb0, rb1, m0, m1);
}

void int8_weight_only_f32_avx512(const BsrLinearArgs& a, int64_t rb0, int64_t rb1, int64_t m0, int64_t m1) {
  bsr_linear_impl<Avx512WeightOnly<float, float>>(a, rb0, rb1, m0, m1);
}

void int8_weight_only_bf16_avx512(const BsrLinearArgs& a, int64_t rb0, int64_t rb1, int64_t m0, int64_t m1) {
  bsr_linear_impl<Avx512WeightOnly<uint16_t, uint16_t>>(a, rb0, rb1, m0, m1);
}

void quantize_rows_avx512(const void* x, int64_t lda, bool bf16, int64_t m0, int64_t m1, int64_t K,
                          uint8_t* out, int64_t ldq, float* scale, int32_t* zero, bool asymmetric,
                          const float* range) {
  // Inf and NaN by class (vfpclassps): min/max drop NaN, so they are caught on their own.
  constexpr int kNonFinite = 0x01 | 0x08 | 0x10 | 0x80;  // QNaN, +Inf, -Inf, SNaN
  for (int64_t m = m0; m < m1; ++m) {
    const int64_t row = m * lda;
    // The range in four independent min/max chains, 64 values a step: with one chain every 16
    // values wait on the latency of the vminps/vmaxps before (4 cycles). Where x comes from DRAM
    // (1024 rows of 3072) the pass is bound by the reads either way.
    __m512 mn[4], mx[4];
    __mmask16 bad = 0;
    for (int j = 0; j < 4; ++j) mn[j] = mx[j] = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 64 <= K; k += 64) {
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) {
        const __m512 v = load16(x, bf16, row + k + 16 * j, 0xffff);
        bad |= _mm512_fpclass_ps_mask(v, kNonFinite);
        mn[j] = _mm512_min_ps(mn[j], v);
        mx[j] = _mm512_max_ps(mx[j], v);
      }
    }
    for (; k < K; k += 16) {
      const __mmask16 msk = avx512_mask(static_cast<int>(min_i64(16, K - k)));
      const __m512 v = load16(x, bf16, row + k, msk);  // masked-off lanes are 0, in the range anyway
      bad |= _mm512_fpclass_ps_mask(v, kNonFinite);
      mn[0] = _mm512_min_ps(mn[0], v);
      mx[0] = _mm512_max_ps(mx[0], v);
    }
    const __m512 vmin = _mm512_min_ps(_mm512_min_ps(mn[0], mn[1]), _mm512_min_ps(mn[2], mn[3]));
    const __m512 vmax = _mm512_max_ps(_mm512_max_ps(mx[0], mx[1]), _mm512_max_ps(mx[2], mx[3]));
    if (bad) {
      scale[m] = __builtin_nanf("");  // the caller raises
      continue;
    }
    float lo = _mm512_reduce_min_ps(vmin), hi = _mm512_reduce_max_ps(vmax);
    if (range) {
      lo = range[0];
      hi = range[1];
    }
    const RowQuant rq = row_quant(lo, hi, asymmetric, &scale[m]);
    zero[m] = rq.zero;
    const __m512 vinv = _mm512_set1_ps(rq.inv);
    const __m512i vzp = _mm512_set1_epi32(rq.zero);
    const __m512i vqmin = _mm512_set1_epi8(static_cast<char>(rq.qmin));
    uint8_t* q = out + m * ldq;
    // 64 values per step: four int32 vectors narrowed by two saturating packs (signed 32 -> 16,
    // then unsigned 16 -> 8: the clamp to [0, 255]) and one permute back to input order, then a
    // single 64-byte store. (A masked vpmovdb store per 16 values costs several times more.)
    // cvtps_epi32 rounds half to even (default MXCSR), as torch.round does; lanes past K are 0
    // and become the zero point.
    const __m512i order = _mm512_set_epi32(15, 11, 7, 3, 14, 10, 6, 2, 13, 9, 5, 1, 12, 8, 4, 0);
    for (int64_t k = 0; k < ldq; k += 64) {
      __m512i v[4];
      for (int j = 0; j < 4; ++j) {
        const int64_t kj = k + 16 * j;
        const __mmask16 in = avx512_mask(static_cast<int>(kj < K ? min_i64(16, K - kj) : 0));
        v[j] = _mm512_add_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(load16(x, bf16, row + kj, in), vinv)), vzp);
      }
      const __m512i packed =
          _mm512_packus_epi16(_mm512_packs_epi32(v[0], v[1]), _mm512_packs_epi32(v[2], v[3]));
      const __m512i bytes = _mm512_max_epu8(_mm512_permutexvar_epi32(order, packed), vqmin);
      const int64_t n = min_i64(64, ldq - k);
      if (n == 64) _mm512_storeu_si512(q + k, bytes);
      else _mm512_mask_storeu_epi8(q + k, (~0ULL) >> (64 - n), bytes);
    }
  }
}

}  // namespace cpu
}  // namespace sparsebert

// --- one-output blocks: vectorized over rows of x ------------------------------------------------
//
// With blocks of one output (br == 1: a CSR of k-quads, the "1x4" blocks of fine-grained
// pruning) the output-vectorized kernel above has one useful lane in 16. This one turns the
// product around: a vector holds 16 rows of x at one k-quad, and each stored quad of an output
// is one broadcast and one vpdpbusd per 16 rows. The activations are transposed once per call
// to quad-major order, xt[quad][row] (transpose_quads_avx512), so those 16 rows are one load.
// A tile is 16 outputs x up to 64 rows: each output accumulates its own quads into MR vectors
// (independent chains), the int32 sums go to a small buffer, and 16 x 16 in-register
// transposes turn them back into rows of y for the dequantizing epilogue.
namespace sparsebert {
namespace cpu {
namespace {

// Transposes the 16 x 16 32-bit matrix r[0..16) in place (rows become columns).
inline void transpose16(__m512i r[16]) {
  __m512i t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
    r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
    r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
    r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
  }
  // r[4a + b] now holds, in 128-bit lane L, rows 4a..4a+3 of column 4L + b; two rounds of
  // 128-bit lane shuffles gather each column's four lanes into one vector.
  for (int i = 0; i < 4; ++i) {
    t[i] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0x88);
    t[i + 4] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0xdd);
    t[i + 8] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0x88);
    t[i + 12] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0xdd);
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0xdd);
    r[i + 4] = _mm512_shuffle_i32x4(t[i + 4], t[i + 12], 0x88);
    r[i + 12] = _mm512_shuffle_i32x4(t[i + 4], t[i + 12], 0xdd);
  }
}

constexpr int kRowsPerVec = 16, kMaxVecs = 4, kTileOut = 16;

// Sums of one output over its stored blocks for MR * 16 rows from row m, blocks of KB k-quads
// (KB = 0: the block width kb known only at run time). U independent accumulator sets take
// turns block by block, so at least four vpdpbusd chains are in flight however few rows there
// are (one chain would wait out the instruction's latency at every quad). Everything is written
// out without lambdas or pointers to the accumulators, which keeps them in registers.
template <int MR, int KB>
inline void rows_accumulate(const uint32_t* __restrict xt, int64_t ldx, const int8_t* __restrict vals,
                            const int32_t* __restrict col, int64_t b0, int64_t b1, int kb_rt, int64_t m,
                            int32_t* __restrict out /* [MR * 16] */) {
  constexpr int U = MR >= 3 ? 1 : 4 / MR;
  const int kb = KB > 0 ? KB : kb_rt;
  __m512i acc[U][MR];
#pragma GCC unroll 4
  for (int u = 0; u < U; ++u)
#pragma GCC unroll 4
    for (int r = 0; r < MR; ++r) acc[u][r] = _mm512_setzero_si512();
  const uint32_t* x0 = xt + m;
  int64_t b = b0;
  for (; b + U <= b1; b += U) {
#pragma GCC unroll 4
    for (int u = 0; u < U; ++u) {
      const uint32_t* xb = x0 + static_cast<int64_t>(col[b + u]) * kb * ldx;
      const int8_t* wb = vals + (b + u) * int64_t(kb) * 4;
      for (int kk = 0; kk < kb; ++kk) {
        uint32_t quad;
        std::memcpy(&quad, wb + kk * 4, 4);
        const __m512i w = _mm512_set1_epi32(static_cast<int>(quad));
#pragma GCC unroll 4
        for (int r = 0; r < MR; ++r)
          acc[u][r] = _mm512_dpbusd_epi32(acc[u][r], _mm512_loadu_si512(xb + kk * ldx + r * kRowsPerVec), w);
      }
    }
  }
  // The blocks left over (fewer than U), on the first accumulator set. (Folding them into the
  // loop above with a bound check per turn measured ~20% slower at M <= 16.)
  for (; b < b1; ++b) {
    const uint32_t* xb = x0 + static_cast<int64_t>(col[b]) * kb * ldx;
    const int8_t* wb = vals + b * int64_t(kb) * 4;
    for (int kk = 0; kk < kb; ++kk) {
      uint32_t quad;
      std::memcpy(&quad, wb + kk * 4, 4);
      const __m512i w = _mm512_set1_epi32(static_cast<int>(quad));
#pragma GCC unroll 4
      for (int r = 0; r < MR; ++r)
        acc[0][r] = _mm512_dpbusd_epi32(acc[0][r], _mm512_loadu_si512(xb + kk * ldx + r * kRowsPerVec), w);
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < MR; ++r) {
    __m512i s = acc[0][r];
#pragma GCC unroll 4
    for (int u = 1; u < U; ++u) s = _mm512_add_epi32(s, acc[u][r]);
    _mm512_storeu_si512(out + r * kRowsPerVec, s);
  }
}

template <int KB>
inline void rows_accumulate_mr(int mr, const uint32_t* xt, int64_t ldx, const int8_t* vals, const int32_t* col,
                               int64_t b0, int64_t b1, int kb, int64_t m, int32_t* out) {
  switch (mr) {
    case 1: return rows_accumulate<1, KB>(xt, ldx, vals, col, b0, b1, kb, m, out);
    case 2: return rows_accumulate<2, KB>(xt, ldx, vals, col, b0, b1, kb, m, out);
    case 3: return rows_accumulate<3, KB>(xt, ldx, vals, col, b0, b1, kb, m, out);
    default: return rows_accumulate<4, KB>(xt, ldx, vals, col, b0, b1, kb, m, out);
  }
}

template <class Y>
void bsr_int8_rows_impl(const BsrLinearArgs& a, int64_t n0, int64_t n1, int64_t m0, int64_t m1) {
  const uint32_t* xt = static_cast<const uint32_t*>(a.x);
  const int8_t* vals = static_cast<const int8_t*>(a.values);
  Y* y = static_cast<Y*>(a.y);
  const int kb = (a.bc + 3) / 4;
  alignas(64) int32_t sums[kTileOut][kMaxVecs * kRowsPerVec];
  // Vectors start at multiples of 16 rows (the transposed buffer holds whole vectors); rows of a
  // vector before m0 are computed and not stored (another task owns them).
  for (int64_t c0 = m0 / kRowsPerVec * kRowsPerVec; c0 < m1; c0 += kMaxVecs * kRowsPerVec) {
    const int rows = static_cast<int>(min_i64(kMaxVecs * kRowsPerVec, m1 - c0));
    const int mr = (rows + kRowsPerVec - 1) / kRowsPerVec;
    for (int64_t t0 = n0; t0 < n1; t0 += kTileOut) {
      const int outs = static_cast<int>(min_i64(kTileOut, n1 - t0));
      for (int j = 0; j < outs; ++j) {
        const int64_t b0 = a.crow[t0 + j], b1 = a.crow[t0 + j + 1];
        if (kb == 1) rows_accumulate_mr<1>(mr, xt, a.lda, vals, a.col, b0, b1, kb, c0, sums[j]);
        else rows_accumulate_mr<0>(mr, xt, a.lda, vals, a.col, b0, b1, kb, c0, sums[j]);
      }
      // Epilogue per 16 rows: the 16 outputs' sums transposed to rows, then as the other INT8
      // kernels: (acc - row_zero * col_sum) * row_scale * col_scale + bias.
      const __mmask16 k = avx512_mask(outs);
      const __m512i csum = _mm512_maskz_loadu_epi32(k, a.col_sum + t0);
      const __m512 cscale = _mm512_maskz_loadu_ps(k, a.col_scale + t0);
      const __m512 bias = a.bias ? _mm512_maskz_loadu_ps(k, a.bias + t0) : _mm512_setzero_ps();
      for (int v = 0; v < mr; ++v) {
        const int vrows = static_cast<int>(min_i64(kRowsPerVec, rows - v * kRowsPerVec));
        __m512i r[16];
        if (vrows <= 4) {
          // A few rows (small batches): gathering their 16 sums costs less than the transpose.
          for (int i = 0; i < vrows; ++i) {
            alignas(64) int32_t row[16] = {};
            for (int j = 0; j < outs; ++j) row[j] = sums[j][v * kRowsPerVec + i];
            r[i] = _mm512_load_si512(row);
          }
        } else {
          for (int j = 0; j < 16; ++j)
            r[j] = j < outs ? _mm512_load_si512(sums[j] + v * kRowsPerVec) : _mm512_setzero_si512();
          transpose16(r);
        }
        for (int i = 0; i < vrows; ++i) {
          const int64_t m = c0 + v * kRowsPerVec + i;
          if (m < m0) continue;
          const __m512i corr = _mm512_sub_epi32(r[i], _mm512_mullo_epi32(csum, _mm512_set1_epi32(a.row_zero[m])));
          __m512 o = _mm512_mul_ps(_mm512_cvtepi32_ps(corr), _mm512_set1_ps(a.row_scale[m]));
          o = _mm512_mul_ps(o, cscale);
          if (a.bias) o = _mm512_add_ps(o, bias);
          if (a.activation == kActGelu) o = vgelu(o);
          store_f32x16(y + m * a.ldy + t0, o, k, a.stream_y);
        }
      }
    }
  }
  if (a.stream_y) _mm_sfence();  // the streaming stores are weakly ordered
}

}  // namespace

void bsr_int8_linear_rows_f32_avx512vnni(const BsrLinearArgs& a, int64_t n0, int64_t n1, int64_t m0, int64_t m1) {
  bsr_int8_rows_impl<float>(a, n0, n1, m0, m1);
}

void bsr_int8_linear_rows_bf16_avx512vnni(const BsrLinearArgs& a, int64_t n0, int64_t n1, int64_t m0, int64_t m1) {
  bsr_int8_rows_impl<uint16_t>(a, n0, n1, m0, m1);
}

void transpose_quads_avx512(const uint8_t* q, int64_t ldq, int64_t M, int64_t quads, uint32_t* xt, int64_t ldx,
                            int64_t q0, int64_t q1) {
  // 16 rows x 16 quads (64 bytes of each row) per step; rows past M read as zeros (never used).
  for (int64_t m0 = 0; m0 < ldx; m0 += 16) {
    for (int64_t c = q0; c < q1; c += 16) {
      const __mmask16 k = avx512_mask(static_cast<int>(min_i64(16, quads - c)));
      __m512i r[16];
      for (int i = 0; i < 16; ++i)
        r[i] = m0 + i < M ? _mm512_maskz_loadu_epi32(k, q + (m0 + i) * ldq + c * 4) : _mm512_setzero_si512();
      transpose16(r);
      const int n = static_cast<int>(min_i64(16, quads - c));
      for (int i = 0; i < n; ++i) _mm512_storeu_si512(xt + (c + i) * ldx + m0, r[i]);
    }
  }
}

}  // namespace cpu
}  // namespace sparsebert
