// attention with bf16 dot products on AVX-512 BF16 (vdpbf16ps), for precision="bf16" on CPUs
// with AVX-512 BF16 (and for fp32 inputs on AMX CPUs, whose AMX kernel reads bf16 only). q, k and
// v (fp32 or bf16) are rounded to bf16 as they are packed; each vdpbf16ps multiplies pairs of bf16
// values exactly and adds them into fp32 accumulators, so both matmuls run at twice the fp32 FMA
// rate. The online softmax runs in fp32 between them (attention_impl.h's helpers, W = 16) and P is
// rounded to bf16 for P V; its row sums l are taken before that rounding. The exponentials are
// vexp_nonpositive's (relative error below 2e-6, far under P's bf16 rounding).
//
// Per (sequence, head) task, with dp = head_dim rounded up to 32 and dp2 = dp / 2 (pairs of dims):
//   K per key block of NK keys as [dp2][NK] 32-bit words, word (p, j) = key j's dims (2p, 2p+1),
//   built W keys at a time and transposed in registers as W x W squares of words;
//   V as [Sk / 2][dp] words, word (jp, d) = dim d of keys (2jp, 2jp+1);
//   Q (unscaled) and P as bf16 rows, so a pair is one 32-bit broadcast.
//   S tiles of RR rows x CN vectors of 16 keys, P V tiles of RR rows x CN vectors of 16 dims, as in
//   the fp32 kernel; the scale is applied to S in fp32.
#include <immintrin.h>

#define SPARSEBERT_ATTN_W 16
#define SPARSEBERT_ATTN_RR 6
#define SPARSEBERT_ATTN_CN 4
#include "attention_impl.h"

namespace sparsebert {
namespace cpu {
namespace {

struct DpScratch {
  std::vector<uint32_t> kt, v, kr;
  std::vector<uint16_t> q, p, vr;
  std::vector<float> s, o, m, l, alpha, mnew;
};

// dst[0 .. n) = src[off .. off + n) as bf16 bits (fp32 rounded to nearest even), zeros up to `padded`.
inline void bf16_row(const void* base, int64_t off, bool bf16, int64_t n, int64_t padded, uint16_t* dst) {
  if (bf16) {
    std::memcpy(dst, static_cast<const uint16_t*>(base) + off, n * sizeof(uint16_t));
  } else {
    const float* src = static_cast<const float*>(base) + off;
    int64_t d = 0;
    for (; d + 16 <= n; d += 16)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + d), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(src + d)));
    if (d < n) {
      const __mmask16 mk = static_cast<__mmask16>((1u << (n - d)) - 1);
      const __m256i h = (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(mk, src + d));
      _mm256_mask_storeu_epi16(dst + d, mk, h);
    }
  }
  for (int64_t d = n; d < padded; ++d) dst[d] = 0;
}

inline __m512bh as_bh(__m512i x) { return (__m512bh)x; }

// S[r0 .. r0+RR) x [c0 .. c0 + NC*16) = Q K^T over np pairs of head dims.
template <int NC>
inline void qk_tile_dp(const uint32_t* q, int64_t dp2, const uint32_t* kt, int64_t np, float* s, int r0, int c0) {
  __m512 acc[RR][NC];
#pragma GCC unroll 8
  for (int r = 0; r < RR; ++r)
#pragma GCC unroll 8
    for (int c = 0; c < NC; ++c) acc[r][c] = _mm512_setzero_ps();
  for (int64_t p = 0; p < np; ++p) {
    __m512i kv[NC];
#pragma GCC unroll 8
    for (int c = 0; c < NC; ++c) kv[c] = _mm512_loadu_si512(kt + p * NK + c0 + c * 16);
#pragma GCC unroll 8
    for (int r = 0; r < RR; ++r) {
      const __m512i qb = _mm512_set1_epi32(static_cast<int>(q[(r0 + r) * dp2 + p]));
#pragma GCC unroll 8
      for (int c = 0; c < NC; ++c) acc[r][c] = _mm512_dpbf16_ps(acc[r][c], as_bh(qb), as_bh(kv[c]));
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < RR; ++r)
#pragma GCC unroll 8
    for (int c = 0; c < NC; ++c) _mm512_storeu_ps(s + (r0 + r) * NK + c0 + c * 16, acc[r][c]);
}

// O[r0 .. r0+RR) x [c0 .. c0 + NC*16) = alpha * O + P V over npairs pairs of keys.
template <int NC>
inline void pv_tile_dp(float* o, int64_t dp, const uint16_t* p, const uint32_t* v, int64_t npairs,
                       const float* alpha, int r0, int64_t c0) {
  __m512 acc[RR][NC];
#pragma GCC unroll 8
  for (int r = 0; r < RR; ++r) {
    const __m512 al = _mm512_set1_ps(alpha[r0 + r]);
#pragma GCC unroll 8
    for (int c = 0; c < NC; ++c) acc[r][c] = _mm512_mul_ps(_mm512_loadu_ps(o + (r0 + r) * dp + c0 + c * 16), al);
  }
  for (int64_t jp = 0; jp < npairs; ++jp) {
    __m512i vv[NC];
#pragma GCC unroll 8
    for (int c = 0; c < NC; ++c) vv[c] = _mm512_loadu_si512(v + jp * dp + c0 + c * 16);
#pragma GCC unroll 8
    for (int r = 0; r < RR; ++r) {
      uint32_t pair;
      std::memcpy(&pair, p + (r0 + r) * NK + 2 * jp, 4);
      const __m512i pb = _mm512_set1_epi32(static_cast<int>(pair));
#pragma GCC unroll 8
      for (int c = 0; c < NC; ++c) acc[r][c] = _mm512_dpbf16_ps(acc[r][c], as_bh(pb), as_bh(vv[c]));
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < RR; ++r)
#pragma GCC unroll 8
    for (int c = 0; c < NC; ++c) _mm512_storeu_ps(o + (r0 + r) * dp + c0 + c * 16, acc[r][c]);
}

template <int NC>
inline void pv_cols_dp(float* o, int64_t dp, const uint16_t* p, const uint32_t* v, int64_t npairs, const float* alpha,
                       int nrr, int64_t c0) {
  for (int r0 = 0; r0 < nrr; r0 += RR) pv_tile_dp<NC>(o, dp, p, v, npairs, alpha, r0, c0);
}

// noipa: compiled on its own, never inlined or cloned for the caller's thread_local scratch (a
// clone re-derives the scratch's address with __tls_get_addr calls in the inner loops, which
// clobber every vector register; see attention_int8_avx512vnni.cpp).
__attribute__((noipa)) void run_task_dp(const AttentionArgs& a, int64_t task, DpScratch& w, Scratch& blocks) {
  const TaskView t = task_view(a, task);
  if (t.lq == 0) return;
  const int64_t D = a.D, dp = round_up(D, 32), dp2 = dp / 2, np = (D + 1) / 2;
  const int64_t nkb = (t.lk + NK - 1) / NK, skp = nkb * NK;
  classify_key_blocks(a, t, nkb, blocks);
  const int64_t esz = a.bf16 ? 2 : 4;
  const void* kbase = static_cast<const char*>(a.k) + t.koff * esz;
  const void* vbase = static_cast<const char*>(a.v) + t.voff * esz;

  // K: W keys at a time as bf16 rows of dp (zero for keys not kept), then each W x W square of
  // words transposed in registers into W rows of the block. V: two keys' rows interleaved.
  w.kt.assign(skp * dp2, 0u);
  w.v.assign(skp / 2 * dp, 0u);
  w.kr.resize(W * dp2);
  w.vr.resize(2 * dp);
  uint16_t* kr16 = reinterpret_cast<uint16_t*>(w.kr.data());
  for (int64_t kb = 0; kb < nkb; ++kb) {
    if (blocks.kind[kb] == kSkip) continue;
    const int64_t j1 = (kb + 1) * NK < t.lk ? (kb + 1) * NK : t.lk;
    uint32_t* ktb = w.kt.data() + kb * NK * dp2;
    for (int64_t jg = kb * NK; jg < j1; jg += W) {
      for (int jj = 0; jj < W; ++jj) {
        const int64_t j = jg + jj;
        uint16_t* row = kr16 + jj * dp;
        if (j >= j1 || blocks.bias[j] != 0.f) {  // padding: zero, whatever k holds there
          std::memset(row, 0, dp * sizeof(uint16_t));
          continue;
        }
        bf16_row(kbase, j * a.k_ss, a.bf16, D, dp, row);
        if (j + W < j1) prefetch_row(kbase, (j + W) * a.k_ss, a.bf16, D);
      }
      uint32_t* dst = ktb + (jg - kb * NK);
      for (int64_t p0 = 0; p0 < np; p0 += W) {
        vf sq[W];
#pragma GCC unroll 16
        for (int jj = 0; jj < W; ++jj) sq[jj] = loadu(reinterpret_cast<const float*>(w.kr.data() + jj * dp2 + p0));
        transpose(sq);
        const int n = static_cast<int>(np - p0 < W ? np - p0 : W);
        for (int i = 0; i < n; ++i) storeu(reinterpret_cast<float*>(dst + (p0 + i) * NK), sq[i]);
      }
    }
    for (int64_t j = kb * NK; j < j1; j += 2) {
      uint16_t* r0 = w.vr.data();
      uint16_t* r1 = r0 + dp;
      const bool keep0 = blocks.bias[j] == 0.f, keep1 = j + 1 < j1 && blocks.bias[j + 1] == 0.f;
      if (!keep0 && !keep1) continue;
      if (keep0)
        bf16_row(vbase, j * a.v_ss, a.bf16, D, dp, r0);
      else
        std::memset(r0, 0, dp * sizeof(uint16_t));
      if (keep1)
        bf16_row(vbase, (j + 1) * a.v_ss, a.bf16, D, dp, r1);
      else
        std::memset(r1, 0, dp * sizeof(uint16_t));
      if (j + 8 < j1) prefetch_row(vbase, (j + 8) * a.v_ss, a.bf16, D);  // rows far apart: no hardware prefetch
      if (j + 9 < j1) prefetch_row(vbase, (j + 9) * a.v_ss, a.bf16, D);
      uint32_t* vdst = w.v.data() + (j / 2) * dp;
      for (int64_t d = 0; d < dp; d += 16) {
        const __m512i lo = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(r0 + d)));
        const __m512i hi = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(r1 + d)));
        _mm512_storeu_si512(vdst + d, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
      }
    }
  }

  w.q.resize(QB * dp);
  w.p.resize(QB * NK);
  w.s.resize(QB * NK);
  w.o.resize(QB * dp);
  w.m.resize(QB);
  w.l.resize(QB);
  w.alpha.resize(QB);
  w.mnew.resize(QB);
  const void* qbase = static_cast<const char*>(a.q) + t.qoff * esz;
  const uint32_t* q32 = reinterpret_cast<const uint32_t*>(w.q.data());
  const int64_t nvec = dp / W, nfull = nvec / CN * CN;

  for (int64_t q0 = 0; q0 < t.lq; q0 += QB) {
    const int nr = static_cast<int>(t.lq - q0 < QB ? t.lq - q0 : QB);
    const int nrr = static_cast<int>(round_up(nr, RR));
    for (int r = 0; r < nr; ++r) {
      if (r + 4 < nr) prefetch_row(qbase, (q0 + r + 4) * a.q_ss, a.bf16, D);
      bf16_row(qbase, (q0 + r) * a.q_ss, a.bf16, D, dp, w.q.data() + r * dp);
    }
    std::memset(w.q.data() + nr * dp, 0, (nrr - nr) * dp * sizeof(uint16_t));
    start_query_block(w.o.data(), w.m.data(), w.l.data(), nrr, dp);

    for (int64_t kb = 0; kb < nkb; ++kb) {
      const uint8_t kind = blocks.kind[kb];
      if (kind == kSkip) continue;
      const int64_t k0 = kb * NK;
      const int64_t nk = t.lk - k0 < NK ? t.lk - k0 : NK;
      // Past ncols no key is kept; whole vectors of 16 keys, so a short sequence computes only its own.
      const int ncols = static_cast<int>(block_columns(blocks, kind, k0, nk, W));
      const int64_t nkv = nk < ncols ? nk : ncols;
      float* s = w.s.data();
      const uint32_t* ktb = w.kt.data() + kb * NK * dp2;
      for (int r0 = 0; r0 < nrr; r0 += RR) {
        int c0 = 0;
        for (; c0 + CN * W <= ncols; c0 += CN * W) qk_tile_dp<CN>(q32, dp2, ktb, np, s, r0, c0);
        switch ((ncols - c0) / W) {  // the last tile: 1..3 vectors of keys
          case 1: qk_tile_dp<1>(q32, dp2, ktb, np, s, r0, c0); break;
          case 2: qk_tile_dp<2>(q32, dp2, ktb, np, s, r0, c0); break;
          case 3: qk_tile_dp<3>(q32, dp2, ktb, np, s, r0, c0); break;
          default: break;
        }
      }

      // Scale and mask in place (for plain blocks with scale > 0 the scale is applied in the exp
      // pass instead), row maxima, then every row's rescale factor.
      const bool deferred = kind == kPlain && a.scale > 0.f;
      for (int r = 0; r < nrr; ++r) {
        const float mx = scale_mask_row_max(a, t, blocks, kind, deferred, r, nr, q0, k0, nk, ncols, s + r * NK);
        const float mnew = mx > w.m[r] ? mx : w.m[r];
        w.alpha[r] = mnew == kNegInf ? 1.f : std::exp(w.m[r] - mnew);  // nothing kept yet: O stays 0
        w.mnew[r] = mnew;
      }

      // P = exp(S - m_new) as bf16; l = alpha * l + row sum of P (before rounding).
      for (int r = 0; r < nrr; ++r) {
        const float* sr = s + r * NK;
        uint16_t* pr = w.p.data() + r * NK;
        const float mnew = w.mnew[r];
        if (mnew == kNegInf) {
          std::memset(pr, 0, ncols * sizeof(uint16_t));
          continue;
        }
        const vf mb = splat(mnew), sc = splat(deferred ? a.scale : 1.f);
        vf sum = splat(0.f);
        for (int c = 0; c < ncols; c += W) {
          const vf pv = (vf)vexp_nonpositive((__m512)(loadu(sr + c) * sc - mb));
          sum += pv;
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(pr + c), (__m256i)_mm512_cvtneps_pbh((__m512)pv));
        }
        w.l[r] = w.l[r] * w.alpha[r] + hsum(sum);
        w.m[r] = mnew;
      }

      const uint32_t* vb = w.v.data() + (k0 / 2) * dp;
      const int64_t npairs = (nkv + 1) / 2;
      for (int64_t c = 0; c < nfull; c += CN)
        pv_cols_dp<CN>(w.o.data(), dp, w.p.data(), vb, npairs, w.alpha.data(), nrr, c * W);
      switch (nvec - nfull) {
        case 0: break;
        case 1: pv_cols_dp<1>(w.o.data(), dp, w.p.data(), vb, npairs, w.alpha.data(), nrr, nfull * W); break;
        case 2: pv_cols_dp<2>(w.o.data(), dp, w.p.data(), vb, npairs, w.alpha.data(), nrr, nfull * W); break;
        case 3: pv_cols_dp<3>(w.o.data(), dp, w.p.data(), vb, npairs, w.alpha.data(), nrr, nfull * W); break;
        default: break;
      }
    }

    // O / l, written in the output dtype.
    for (int r = 0; r < nr; ++r)
      store_out_row(a, t.ooff + (q0 + r) * a.o_ss, w.o.data() + r * dp, D, w.l[r] > 0.f ? 1.f / w.l[r] : 0.f);
  }
}

}  // namespace

void attention_dpbf16_avx512bf16(const AttentionArgs& a, const int64_t* tasks, int64_t n) {
  thread_local DpScratch scratch;
  thread_local Scratch blocks;
  for (int64_t i = 0; i < n; ++i) run_task_dp(a, tasks[i], scratch, blocks);
}

}  // namespace cpu
}  // namespace sparsebert
