// attention at precision="int8" with AVX-512 (the VNNI and AMX builds include this; the matmuls
// come from the including file). The numbers are those of
// sparsebert.ops.attention_reference(precision="int8") (the definition, documented there):
//   q and k per row (token, head) and v per column (head dim, over the sequence's kept keys)
//   symmetric int8, scale max|x| / 127, round half to even;
//   S = (q_q k_q^T) * (s_q * scale) * s_k in fp32 from an exact int32 product, the mask added;
//   E = exp(S - rowmax S) in fp32, l = row sum of E, P = round(255 E) in 0..255 (uint8);
//   out = (P v_q) * s_v / (255 l), the product exact in int32.
// Since the row maximum is taken over every key before P is quantized, a query block's score rows
// are computed in full (QB rows x all keys, fp32) instead of the fp32 kernel's online softmax.
// Both products are exact in int32, so every build gives the same bits.
//
// Per (sequence, head) task, with nq = ceil(D / 4) quads of head dims, nqp = nq rounded up to 16
// and dp = D rounded up to 16:
//   K as [nq][keys] 32-bit words (nqp rows where the matmul reads whole 64-byte steps, zero past
//   nq), word (p, j) = key j's int8 dims 4p..4p+3, built 16 keys at a time and transposed in
//   registers as 16 x 16 squares of words;
//   V as [keys / 4][dp] words, word (jq, d) = dim d of keys 4jq..4jq+3;
//   Q and P as byte rows (Q: nqp * 4 bytes, zero past D), so four of them are one 32-bit word.
// Non-finite inputs: a NaN in a row of q gives that output row NaN; in a kept key's k, every row;
// in a column of v, that output column. Padded keys are never read.
//
// The matmuls are a policy class MM (attention_int8_avx512vnni.cpp: vpdpbusd register tiles;
// attention_int8_amx.cpp: AMX tiles) with:
//   kSignedQ   Q's bytes are q_q (true) or q_q + 128 (false: u8 x s8 dot products, corrected by
//              128 * sum_d k_q[j, d] per key, w.ksum);
//   kRows      query rows are computed in multiples of this (rows past the block's are zero);
//   kKeyStep   P V reads each kept key block's keys up to its last kept column rounded up to
//              this: P is zero there (V words may hold anything: they only meet zeros);
//   kPadQuads  K has nqp rows, zero past nq;
//   qk(w, d, nrows, k0, ncols): S rows [0, nrows) x keys [k0, k0 + ncols) as fp32 scores,
//              (q_q k_q^T) * w.sq[row] * w.sk[key] (the mask is added after);
//   pv(w, d, blocks, nrows): w.orow rows [0, nrows) x dp = (P v_q) * w.sv / (255 w.l).
#pragma once

#include <immintrin.h>

#include "attention_impl.h"

namespace sparsebert {
namespace cpu {
namespace {

struct I8Scratch {
  std::vector<uint32_t> kt, kr, q, vw;
  std::vector<int32_t> ksum;
  std::vector<float> sk, sq, s, sv, vinv, l, orow;
  std::vector<uint8_t> p;
  std::vector<int64_t> cols, steps;
};

// One task's sizes: head dim D, dp, nq, nqp as above; nkb key blocks of NK, skp = nkb * NK keys.
struct I8Dims {
  int64_t D, dp, nq, nqp, nkb, skp;
};

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

// The factor of an output row with softmax sum l: 1 / (255 l); 0 for a row with no kept key
// (l = 0), NaN for a NaN one.
inline float pv_row_factor(float l) { return l > 0.f ? 1.f / (255.f * l) : (l == 0.f ? 0.f : l); }

// Compiled on its own (noipa: neither inlined nor cloned for its caller's arguments): w and blocks
// are thread_local there, and a clone specialized for them re-derived their address with a call to
// __tls_get_addr inside the softmax loop, which clobbers every vector register (the row sum then
// lived on the stack).
template <class MM>
__attribute__((noipa)) void run_task_i8(const AttentionArgs& a, int64_t task, I8Scratch& w, Scratch& blocks) {
  const TaskView t = task_view(a, task);
  if (t.lq == 0) return;
  const int64_t D = a.D, dp = round_up(D, 16), nq = (D + 3) / 4, nqp = round_up(nq, 16);
  const int64_t nkb = (t.lk + NK - 1) / NK, skp = nkb * NK;
  const I8Dims dims{D, dp, nq, nqp, nkb, skp};
  static_assert(QB % MM::kRows == 0 && NK % MM::kKeyStep == 0, "query and key blocks must be whole matmul steps");
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
  const int64_t kt_rows = MM::kPadQuads ? nqp : nq;
  w.kt.resize(kt_rows * skp);  // every column read (those within cols) is written below
  if (kt_rows > nq) std::fill(w.kt.begin() + nq * skp, w.kt.end(), 0u);
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
  constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

  for (int64_t q0 = 0; q0 < t.lq; q0 += QB) {
    const int nr = static_cast<int>(t.lq - q0 < QB ? t.lq - q0 : QB);
    const int nrr = static_cast<int>(round_up(nr, MM::kRows));
    for (int r = 0; r < nrr; ++r) {
      uint8_t* row = reinterpret_cast<uint8_t*>(w.q.data() + r * nqp);
      std::memset(row, MM::kSignedQ ? 0 : 128, 4 * nqp);  // q_q = 0
      if (r >= nr) {
        w.sq[r] = 0.f;
        continue;
      }
      if (r + 4 < nr) prefetch_row(qbase, (q0 + r + 4) * a.q_ss, a.bf16, D);
      w.sq[r] = quantize_row<!MM::kSignedQ, false>(qbase, (q0 + r) * a.q_ss, a.bf16, D, row, nullptr) * a.scale;
    }

    float* s = w.s.data();
    for (int64_t kb = 0; kb < nkb; ++kb) {
      const uint8_t kind = blocks.kind[kb];
      if (kind == kSkip) continue;
      const int64_t k0 = kb * NK, nk = std::min<int64_t>(NK, t.lk - k0);
      MM::qk(w, dims, nrr, k0, cols[kb]);
      if (kind == kBias) {
        for (int r = 0; r < nrr; ++r)
          for (int64_t c = k0; c < k0 + cols[kb]; c += W)
            storeu(s + r * skp + c, loadu(s + r * skp + c) + loadu(&blocks.bias[c]));
      } else if (kind == kMask) {
        for (int r = 0; r < nr; ++r) add_mask_row(a, t, q0 + r, k0, nk, s + r * skp + k0);
      }
    }

    // Row maxima over every kept key, then E, l and P. The row's output lines are fetched here,
    // well before P V's results are copied into them (stores into lines not in cache stalled
    // that copy).
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
        const int64_t c1 = kb * NK + round_up(cols[kb], MM::kKeyStep);  // the keys P V reads past cols
        if (c1 > kb * NK + cols[kb]) std::memset(pr + kb * NK + cols[kb], 0, c1 - kb * NK - cols[kb]);
      }
      w.l[r] = _mm512_reduce_add_ps(sum);
    }

    MM::pv(w, dims, blocks, nrr);
    const float* o = w.orow.data();
    for (int r = 0; r < nr; ++r) store_out_row(a, t.ooff + (q0 + r) * a.o_ss, o + r * dp, D, 1.f);  // 1 / l applied
  }
}

template <class MM>
inline void attention_int8_run(const AttentionArgs& a, const int64_t* tasks, int64_t n) {
  thread_local I8Scratch scratch;
  thread_local Scratch blocks;
  for (int64_t i = 0; i < n; ++i) run_task_i8<MM>(a, tasks[i], scratch, blocks);
}

}  // namespace
}  // namespace cpu
}  // namespace sparsebert
