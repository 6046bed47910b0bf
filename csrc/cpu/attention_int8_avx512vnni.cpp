// attention with INT8 matmuls on AVX-512 VNNI (vpdpbusd), for precision="int8". The numbers are
// those of sparsebert.ops.attention_reference(precision="int8") (the definition, documented there):
//   q and k per row (token, head) and v per column (head dim, over the sequence's kept keys)
//   symmetric int8, scale max|x| / 127, round half to even;
//   S = (q_q k_q^T) * (s_q * scale) * s_k in fp32 from an exact int32 product, the mask added;
//   E = exp(S - rowmax S) in fp32, l = row sum of E, P = round(255 E) in 0..255 (uint8);
//   out = (P v_q) * s_v / (255 l), the product exact in int32.
// Since the row maximum is taken over every key before P is quantized, a query block's score rows
// are computed in full (QB rows x all keys, fp32) instead of the fp32 kernel's online softmax.
//
// vpdpbusd multiplies unsigned by signed bytes: Q is stored as q_q + 128 (1..255) and the product
// corrected by 128 * sum_d k_q[j, d] per key; P is unsigned already and V signed.
// Per (sequence, head) task, with nq = ceil(D / 4) quads of head dims and dp = D rounded up to 16:
//   K as [nq][keys] 32-bit words, word (p, j) = key j's int8 dims 4p..4p+3, built 16 keys at a
//   time and transposed in registers as 16 x 16 squares of words;
//   V as [keys / 4][dp] words, word (jq, d) = dim d of keys 4jq..4jq+3;
//   Q and P as byte rows, so four of them are one 32-bit broadcast.
// Non-finite inputs: a NaN in a row of q gives that output row NaN; in a kept key's k, every row;
// in a column of v, that output column. Padded keys are never read.
//
// CPUs with AMX run this kernel too. Both matmuls on INT8 tiles (the layouts above are the tiles'
// own: Q and P as A tiles, K and V quad words as B tiles; q_q k_q^T with tdpbssd, P v_q with
// tdpbusd, the same bits) were built and measured on a Xeon with AMX, BERT-base 12 heads of 64, 2
// threads: one attention op 0.96 / 0.89 ms at 8x128 against 0.95 / 0.92 here, and the whole 90% +
// INT8 model 9.0 / 47.3 / 31.7 ms against 8.6 / 47.9 / 31.2 (1x128 / 8x128 / mixed): no faster.
// At head dim 64 each C tile takes one tile multiply (K = 64) between a zeroing and a store, and
// the quantization, softmax and copies around the matmuls take most of a task either way.
#include <immintrin.h>

#define SPARSEBERT_ATTN_W 16
#define SPARSEBERT_ATTN_RR 6
#define SPARSEBERT_ATTN_CN 4
#include "attention_impl.h"

namespace sparsebert {
namespace cpu {
namespace {

struct I8Scratch {
  std::vector<uint32_t> kt, kr, q, vw;
  std::vector<int32_t> ksum;
  std::vector<float> sk, sq, s, sv, vinv, l, orow;
  std::vector<uint8_t> p;
  std::vector<int64_t> cols;
};

// 16 int32 lanes as GCC's own vector type: an array of __m512i accumulators updated through
// _mm512_dpbusd_epi32 (which casts each to v16si and back) was kept in memory by GCC 12, with a
// store and two register moves per vpdpbusd; the builtin on v16si keeps it in registers.
typedef int v16i __attribute__((vector_size(64)));
inline v16i dpbusd(v16i acc, v16i u8, v16i s8) { return __builtin_ia32_vpdpbusd_v16si(acc, u8, s8); }

// 16 values of a row (fp32, or bf16 bits widened) from element d; lanes at or past n are 0.
inline __m512 load16(const void* base, int64_t off, bool bf16, int64_t d, int64_t n) {
  const int64_t left = n - d;
  const __mmask16 mk = left >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << left) - 1);
  if (bf16) {
    const __m256i h = _mm256_maskz_loadu_epi16(mk, static_cast<const uint16_t*>(base) + off + d);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
  return _mm512_maskz_loadu_ps(mk, static_cast<const float*>(base) + off + d);
}

// round(x * inv) as int32 lanes (round half to even: the default MXCSR mode). With inv =
// 127 / max|x| the product is at most 127 and an ulp in magnitude, so no clamp is needed.
inline __m512i quantize16(__m512 x, __m512 inv) { return _mm512_cvtps_epi32(_mm512_mul_ps(x, inv)); }

// max |x| of a row as the largest sign-cleared bit pattern: a NaN (above +inf) wins, so it
// reaches the scale without a compare per vector.
inline float row_absmax(const void* base, int64_t off, bool bf16, int64_t D) {
  const __m512i magnitude = _mm512_set1_epi32(0x7fffffff);
  __m512i mx = _mm512_setzero_si512();
  for (int64_t d = 0; d < D; d += 16)
    mx = _mm512_max_epu32(mx, _mm512_and_si512(_mm512_castps_si512(load16(base, off, bf16, d, D)), magnitude));
  const uint32_t bits = _mm512_reduce_max_epu32(mx);
  float amax;
  std::memcpy(&amax, &bits, sizeof amax);
  return amax;
}

inline float inverse_scale(float amax) { return amax > 0.f && amax == amax ? 127.f / amax : 0.f; }

// One row of D values quantized symmetric to int8, as bytes (Unsigned: plus 128), written as
// round_up(D, 16) bytes (0, or 128, past D); returns the scale max|x| / 127 (NaN when the row
// holds a NaN). Sum: *sum = the sum of the int8 values.
template <bool Unsigned, bool Sum>
inline float quantize_row(const void* base, int64_t off, bool bf16, int64_t D, uint8_t* dst, int32_t* sum) {
  const float amax = row_absmax(base, off, bf16, D);
  const __m512 inv = _mm512_set1_ps(inverse_scale(amax));
  __m512i total = _mm512_setzero_si512();
  for (int64_t d = 0; d < D; d += 16) {
    const __m512i q = quantize16(load16(base, off, bf16, d, D), inv);
    if (Sum) total = _mm512_add_epi32(total, q);
    __m128i b = _mm512_cvtepi32_epi8(q);
    if (Unsigned) b = _mm_xor_si128(b, _mm_set1_epi8(static_cast<char>(0x80)));  // two's complement + 128
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + d), b);
  }
  if (Sum) *sum = _mm512_reduce_add_epi32(total);
  return amax == amax ? amax / 127.f : amax;
}

// S[r0 .. r0+RR) x [c0 .. c0 + NC*16) over nq quads of head dims, corrected and scaled to fp32.
template <int NC>
inline void qk_tile_i8(const uint32_t* q, int64_t nqp, const uint32_t* kt, int64_t skp, int64_t nq,
                       const int32_t* ksum, const float* sq, const float* sk, float* s, int r0, int64_t c0) {
  v16i acc[RR][NC];
#pragma GCC unroll 8
  for (int r = 0; r < RR; ++r)
#pragma GCC unroll 8
    for (int c = 0; c < NC; ++c) acc[r][c] = v16i{};
  for (int64_t p = 0; p < nq; ++p) {
    v16i kv[NC];
#pragma GCC unroll 8
    for (int c = 0; c < NC; ++c) kv[c] = (v16i)_mm512_loadu_si512(kt + p * skp + c0 + c * 16);
#pragma GCC unroll 8
    for (int r = 0; r < RR; ++r) {
      const v16i qb = (v16i)_mm512_set1_epi32(static_cast<int>(q[(r0 + r) * nqp + p]));
#pragma GCC unroll 8
      for (int c = 0; c < NC; ++c) acc[r][c] = dpbusd(acc[r][c], qb, kv[c]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < RR; ++r) {
    const __m512 sqr = _mm512_set1_ps(sq[r0 + r]);
#pragma GCC unroll 8
    for (int c = 0; c < NC; ++c) {
      const __m512i corr = _mm512_slli_epi32(_mm512_loadu_si512(ksum + c0 + c * 16), 7);
      const __m512 x = _mm512_cvtepi32_ps(_mm512_sub_epi32((__m512i)acc[r][c], corr));
      _mm512_storeu_ps(s + (r0 + r) * skp + c0 + c * 16, _mm512_mul_ps(_mm512_mul_ps(x, sqr), _mm512_loadu_ps(sk + c0 + c * 16)));
    }
  }
}

// Quads [q0, q1) of keys: their slice of P V added into acc (RR rows x NC vectors of 16 dims).
template <int NC>
inline void pv_add_i8(v16i (&acc)[RR][NC], const uint8_t* p, int64_t pstride, const uint32_t* vw, int64_t dp,
                      int64_t q0, int64_t q1, int r0, int64_t c0) {
  for (int64_t jq = q0; jq < q1; ++jq) {
    v16i vv[NC];
#pragma GCC unroll 8
    for (int c = 0; c < NC; ++c) vv[c] = (v16i)_mm512_loadu_si512(vw + jq * dp + c0 + c * 16);
#pragma GCC unroll 8
    for (int r = 0; r < RR; ++r) {
      uint32_t quad;
      std::memcpy(&quad, p + (r0 + r) * pstride + 4 * jq, 4);
      const v16i pb = (v16i)_mm512_set1_epi32(static_cast<int>(quad));
#pragma GCC unroll 8
      for (int c = 0; c < NC; ++c) acc[r][c] = dpbusd(acc[r][c], pb, vv[c]);
    }
  }
}

// O[r0 .. r0+RR) x [c0 .. c0 + NC*16) = (P V) * s_v * (1 / (255 l)), over the kept key blocks.
template <int NC>
inline void pv_tile_i8(const uint8_t* p, int64_t pstride, const uint32_t* vw, int64_t dp, const Scratch& blocks,
                       int64_t nkb, const int64_t* cols, const float* sv, const float* l, float* o, int r0,
                       int64_t c0) {
  v16i acc[RR][NC];
#pragma GCC unroll 8
  for (int r = 0; r < RR; ++r)
#pragma GCC unroll 8
    for (int c = 0; c < NC; ++c) acc[r][c] = v16i{};
  for (int64_t kb = 0; kb < nkb; ++kb)
    if (blocks.kind[kb] != kSkip) pv_add_i8<NC>(acc, p, pstride, vw, dp, kb * NK / 4, (kb * NK + cols[kb]) / 4, r0, c0);
#pragma GCC unroll 8
  for (int r = 0; r < RR; ++r) {
    const float lr = l[r0 + r];
    const __m512 inv = _mm512_set1_ps(lr > 0.f ? 1.f / (255.f * lr) : (lr == 0.f ? 0.f : lr));
#pragma GCC unroll 8
    for (int c = 0; c < NC; ++c)
      _mm512_storeu_ps(o + (r0 + r) * dp + c0 + c * 16,
                       _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps((__m512i)acc[r][c]), _mm512_loadu_ps(sv + c0 + c * 16)),
                                     inv));
  }
}

template <int NC>
inline void pv_cols_i8(const uint8_t* p, int64_t pstride, const uint32_t* vw, int64_t dp, const Scratch& blocks,
                       int64_t nkb, const int64_t* cols, const float* sv, const float* l, float* o, int nrr,
                       int64_t c0) {
  for (int r0 = 0; r0 < nrr; r0 += RR) pv_tile_i8<NC>(p, pstride, vw, dp, blocks, nkb, cols, sv, l, o, r0, c0);
}

// Compiled on its own (noipa: neither inlined nor cloned for its caller's arguments): w and blocks
// are thread_local there, and a clone specialized for them re-derived their address with a call to
// __tls_get_addr inside the softmax loop, which clobbers every vector register (the row sum then
// lived on the stack).
__attribute__((noipa)) void run_task_i8(const AttentionArgs& a, int64_t task, I8Scratch& w, Scratch& blocks) {
  const TaskView t = task_view(a, task);
  if (t.lq == 0) return;
  const int64_t D = a.D, dp = round_up(D, 16), nq = (D + 3) / 4, nqp = round_up(nq, 16);
  const int64_t nkb = (t.lk + NK - 1) / NK, skp = nkb * NK;
  classify_key_blocks(a, t, nkb, blocks);
  const int64_t esz = a.bf16 ? 2 : 4;
  const void* kbase = static_cast<const char*>(a.k) + t.koff * esz;
  const void* vbase = static_cast<const char*>(a.v) + t.voff * esz;

  // Columns of each key block worth computing (past them no key is kept), whole vectors of 16.
  std::vector<int64_t>& cols = w.cols;
  cols.assign(nkb, 0);
  for (int64_t kb = 0; kb < nkb; ++kb)
    if (blocks.kind[kb] != kSkip)
      cols[kb] = block_columns(blocks, blocks.kind[kb], kb * NK, std::min<int64_t>(NK, t.lk - kb * NK), W);

  // K: each kept key's row quantized into kr (16 rows of nqp words), then 16 x 16 squares of
  // words transposed into kt. Keys not kept: zero words, sum 0, scale 0.
  w.kt.resize(nq * skp);  // every column read (those within cols) is written below
  w.ksum.assign(skp, 0);
  w.sk.assign(skp, 0.f);
  w.kr.resize(16 * nqp);
  // V: each column's max |v| over the kept keys, as sign-cleared bit patterns (a NaN wins).
  const __m512i magnitude = _mm512_set1_epi32(0x7fffffff);
  __m512i vmax[256 / 16];
  for (int64_t i = 0; i < dp / 16; ++i) vmax[i] = _mm512_setzero_si512();
  for (int64_t kb = 0; kb < nkb; ++kb) {
    if (blocks.kind[kb] == kSkip) continue;
    const int64_t j1 = std::min((kb + 1) * NK, t.lk);
    for (int64_t jg = kb * NK; jg < j1; jg += 16) {
      for (int jj = 0; jj < 16; ++jj) {
        const int64_t j = jg + jj;
        uint8_t* row = reinterpret_cast<uint8_t*>(w.kr.data() + jj * nqp);
        if (j >= j1 || blocks.bias[j] != 0.f) {  // padding: zero, whatever k and v hold there
          std::memset(row, 0, 4 * nqp);
          continue;
        }
        if (j + 16 < j1) {  // the same key of the next group: rows far apart defeat the prefetchers
          prefetch_row(kbase, (j + 16) * a.k_ss, a.bf16, D);
          prefetch_row(vbase, (j + 16) * a.v_ss, a.bf16, D);
        }
        w.sk[j] = quantize_row<false, true>(kbase, j * a.k_ss, a.bf16, D, row, &w.ksum[j]);
        for (int64_t d = 0; d < D; d += 16)
          vmax[d / 16] = _mm512_max_epu32(
              vmax[d / 16], _mm512_and_si512(_mm512_castps_si512(load16(vbase, j * a.v_ss, a.bf16, d, D)), magnitude));
      }
      uint32_t* dst = w.kt.data() + jg;
      for (int64_t p0 = 0; p0 < nq; p0 += 16) {
        vf sqr[16];
#pragma GCC unroll 16
        for (int jj = 0; jj < 16; ++jj) sqr[jj] = loadu(reinterpret_cast<const float*>(w.kr.data() + jj * nqp + p0));
        transpose(sqr);
        const int n = static_cast<int>(nq - p0 < 16 ? nq - p0 : 16);
        for (int i = 0; i < n; ++i) storeu(reinterpret_cast<float*>(dst + (p0 + i) * skp), sqr[i]);
      }
    }
  }
  w.sv.resize(dp);
  w.vinv.resize(dp);
  for (int64_t d = 0; d < dp; d += 16) {
    const __m512 mx = _mm512_castsi512_ps(vmax[d / 16]);
    const __mmask16 pos = _mm512_cmp_ps_mask(mx, _mm512_setzero_ps(), _CMP_GT_OQ);  // not NaN, not 0
    _mm512_storeu_ps(&w.vinv[d], _mm512_maskz_div_ps(pos, _mm512_set1_ps(127.f), mx));
    _mm512_storeu_ps(&w.sv[d], _mm512_div_ps(mx, _mm512_set1_ps(127.f)));  // NaN stays NaN
  }
  // V words: four keys' int8 values of one dim per 32-bit word, quantized from the input rows.
  w.vw.resize(skp / 4 * dp);  // every quad read (those within cols) is written below
  for (int64_t kb = 0; kb < nkb; ++kb) {
    if (blocks.kind[kb] == kSkip) continue;
    for (int64_t jq = kb * NK / 4; jq < (kb * NK + cols[kb]) / 4; ++jq) {
      bool keep[4];
      for (int i = 0; i < 4; ++i) keep[i] = 4 * jq + i < t.lk && blocks.bias[4 * jq + i] == 0.f;
      for (int64_t d = 0; d < dp; d += 16) {
        const __m512 inv = _mm512_loadu_ps(&w.vinv[d]);
        __m512i word = _mm512_setzero_si512();
        for (int i = 0; i < 4; ++i) {
          if (!keep[i]) continue;
          const __m512i q = quantize16(load16(vbase, (4 * jq + i) * a.v_ss, a.bf16, d, D), inv);
          word = _mm512_or_si512(word, _mm512_slli_epi32(_mm512_and_si512(q, _mm512_set1_epi32(0xff)), 8 * i));
        }
        _mm512_storeu_si512(w.vw.data() + jq * dp + d, word);
      }
    }
  }

  w.q.resize(QB * nqp);
  w.sq.resize(QB);
  w.s.resize(QB * skp);
  w.p.resize(QB * skp);
  w.l.resize(QB);
  w.orow.resize(QB * dp);
  const void* qbase = static_cast<const char*>(a.q) + t.qoff * esz;
  const int64_t nvec = dp / W, nfull = nvec / CN * CN;
  constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

  for (int64_t q0 = 0; q0 < t.lq; q0 += QB) {
    const int nr = static_cast<int>(t.lq - q0 < QB ? t.lq - q0 : QB);
    const int nrr = static_cast<int>(round_up(nr, RR));
    for (int r = 0; r < nrr; ++r) {
      uint8_t* row = reinterpret_cast<uint8_t*>(w.q.data() + r * nqp);
      std::memset(row, 128, 4 * nqp);  // q_q = 0
      if (r >= nr) {
        w.sq[r] = 0.f;
        continue;
      }
      if (r + 4 < nr) prefetch_row(qbase, (q0 + r + 4) * a.q_ss, a.bf16, D);
      w.sq[r] = quantize_row<true, false>(qbase, (q0 + r) * a.q_ss, a.bf16, D, row, nullptr) * a.scale;
    }

    float* s = w.s.data();
    for (int64_t kb = 0; kb < nkb; ++kb) {
      const uint8_t kind = blocks.kind[kb];
      if (kind == kSkip) continue;
      const int64_t k0 = kb * NK, nk = std::min<int64_t>(NK, t.lk - k0);
      const uint32_t* q = w.q.data();
      for (int r0 = 0; r0 < nrr; r0 += RR) {
        int64_t c0 = k0;
        for (; c0 + CN * W <= k0 + cols[kb]; c0 += CN * W)
          qk_tile_i8<CN>(q, nqp, w.kt.data(), skp, nq, w.ksum.data(), w.sq.data(), w.sk.data(), s, r0, c0);
        switch ((k0 + cols[kb] - c0) / W) {  // the last tile: 1..3 vectors of keys
          case 1: qk_tile_i8<1>(q, nqp, w.kt.data(), skp, nq, w.ksum.data(), w.sq.data(), w.sk.data(), s, r0, c0); break;
          case 2: qk_tile_i8<2>(q, nqp, w.kt.data(), skp, nq, w.ksum.data(), w.sq.data(), w.sk.data(), s, r0, c0); break;
          case 3: qk_tile_i8<3>(q, nqp, w.kt.data(), skp, nq, w.ksum.data(), w.sq.data(), w.sk.data(), s, r0, c0); break;
          default: break;
        }
      }
      if (kind == kBias) {
        for (int r = 0; r < nrr; ++r)
          for (int64_t c = k0; c < k0 + cols[kb]; c += W)
            storeu(s + r * skp + c, loadu(s + r * skp + c) + loadu(&blocks.bias[c]));
      } else if (kind == kMask) {
        for (int r = 0; r < nr; ++r) add_mask_row(a, t, q0 + r, k0, nk, s + r * skp + k0);
      }
    }

    // Row maxima over every kept key, then E, l and P. The row's output lines are fetched here,
    // well before P V's results are copied into them: the output is [tokens, hidden], lines not
    // in cache, and the copy stalled on them (12% of a task at BERT-base 8x128).
    for (int r = 0; r < nrr; ++r) {
      if (r < nr) prefetch_row(a.out, t.ooff + (q0 + r) * a.o_ss, a.bf16, D);
      const float* sr = s + r * skp;
      uint8_t* pr = w.p.data() + r * skp;
      __m512 mv = _mm512_set1_ps(kNegInf);
      __mmask16 nan = 0;
      for (int64_t kb = 0; kb < nkb; ++kb) {
        if (blocks.kind[kb] == kSkip) continue;
        for (int64_t c = kb * NK; c < kb * NK + cols[kb]; c += W) {
          const __m512 x = _mm512_loadu_ps(sr + c);
          nan |= _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
          mv = _mm512_max_ps(mv, x);
        }
      }
      const float m = _mm512_reduce_max_ps(mv);
      if (m == kNegInf || nan) {  // no kept key (zeros), or a NaN score (NaN)
        w.l[r] = nan ? kNaN : 0.f;
        std::memset(pr, 0, skp);
        continue;
      }
      const __m512 mb = _mm512_set1_ps(m), k255 = _mm512_set1_ps(255.f);
      __m512 sum = _mm512_setzero_ps();
      for (int64_t kb = 0; kb < nkb; ++kb) {
        if (blocks.kind[kb] == kSkip) continue;
        for (int64_t c = kb * NK; c < kb * NK + cols[kb]; c += W) {
          const __m512 e = vexp_nonpositive(_mm512_sub_ps(_mm512_loadu_ps(sr + c), mb));
          sum = _mm512_add_ps(sum, e);
          _mm_storeu_si128(reinterpret_cast<__m128i*>(pr + c), _mm512_cvtusepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(e, k255))));
        }
      }
      w.l[r] = _mm512_reduce_add_ps(sum);
    }

    float* o = w.orow.data();
    for (int64_t c = 0; c < nfull; c += CN)
      pv_cols_i8<CN>(w.p.data(), skp, w.vw.data(), dp, blocks, nkb, cols.data(), w.sv.data(), w.l.data(), o, nrr, c * W);
    switch (nvec - nfull) {
      case 0: break;
      case 1: pv_cols_i8<1>(w.p.data(), skp, w.vw.data(), dp, blocks, nkb, cols.data(), w.sv.data(), w.l.data(), o, nrr, nfull * W); break;
      case 2: pv_cols_i8<2>(w.p.data(), skp, w.vw.data(), dp, blocks, nkb, cols.data(), w.sv.data(), w.l.data(), o, nrr, nfull * W); break;
      case 3: pv_cols_i8<3>(w.p.data(), skp, w.vw.data(), dp, blocks, nkb, cols.data(), w.sv.data(), w.l.data(), o, nrr, nfull * W); break;
      default: break;
    }

    for (int r = 0; r < nr; ++r) store_out_row(a, t.ooff + (q0 + r) * a.o_ss, o + r * dp, D, 1.f);  // 1 / l applied
  }
}

}  // namespace

void attention_int8_avx512vnni(const AttentionArgs& a, const int64_t* tasks, int64_t n) {
  thread_local I8Scratch scratch;
  thread_local Scratch blocks;
  for (int64_t i = 0; i < n; ++i) run_task_i8(a, tasks[i], scratch, blocks);
}

}  // namespace cpu
}  // namespace sparsebert
