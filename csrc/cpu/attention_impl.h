// Fused attention on the CPU, written once over GCC vector types of W floats and built by each ISA
// translation unit (attention_<isa>.cpp) with its own -m flags: W = 16 is one zmm register under
// AVX-512, W = 8 one ymm under AVX2, W = 4 one xmm in the baseline (SSE2) build.
//
// Per (sequence, head) task:
//   1. K is packed transposed, per block of NK keys ([block][D][NK], fp32, zero-padded) and V
//      row-major ([Sk padded][Dp], fp32, zero-padded to Dp = D rounded up to W); bf16 inputs are
//      widened here, so every matmul below is fp32 x fp32 -> fp32.
//   2. For every block of QB query rows (packed and pre-multiplied by `scale`), for every key block:
//      S = Q K^T (register tiles of RR rows x CN vectors), the mask added, then the online softmax
//      (running row max m and sum l; P = exp(S - m) overwrites S; the output accumulator O is
//      rescaled by exp(m_old - m_new) inside the P V tile, which adds P V to it).
//   3. O / l is written out (zeros where l == 0: a row none of whose keys is kept).
// Key blocks that are all padding (key-padding mask) are skipped, and padded keys are never read:
// whatever k and v hold there (even NaN) cannot reach the output.
//
// Include only from the ISA files: everything has internal linkage, so each build keeps its own
// instruction set. Needs SPARSEBERT_ATTN_W, SPARSEBERT_ATTN_RR and SPARSEBERT_ATTN_CN defined;
// SPARSEBERT_ATTN_NK (keys per block, default 128) may be.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

#include "attention_kernel.h"
#include "bf16_bits.h"
#include "vec_math.h"  // vexp

namespace sparsebert {
namespace cpu {
namespace {

constexpr int W = SPARSEBERT_ATTN_W;    // floats per vector
constexpr int RR = SPARSEBERT_ATTN_RR;  // rows per register tile
constexpr int CN = SPARSEBERT_ATTN_CN;  // vectors per register tile row
#ifndef SPARSEBERT_ATTN_NK
#define SPARSEBERT_ATTN_NK 128
#endif
constexpr int NK = SPARSEBERT_ATTN_NK;  // keys per key block
constexpr int QB = 8 * RR;              // query rows per query block
static_assert(NK % (W * CN) == 0, "a key block must be whole register tiles wide");

typedef float vf __attribute__((vector_size(W * sizeof(float))));
typedef float vfu __attribute__((vector_size(W * sizeof(float)), aligned(4)));  // unaligned access
typedef int32_t vi __attribute__((vector_size(W * sizeof(float))));

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

inline vf loadu(const float* p) { return *reinterpret_cast<const vfu*>(p); }
inline void storeu(float* p, vf v) { *reinterpret_cast<vfu*>(p) = v; }
inline vf splat(float s) { return vsplat<vf>(s); }
inline int64_t round_up(int64_t a, int64_t m) { return (a + m - 1) / m * m; }

// Lane i of the result is lane i ^ Step of v (a butterfly step of a horizontal reduction). The
// index vector is a literal, so each step is one constant shuffle.
template <int Step, size_t... I>
inline vf swap_lanes(vf v, std::index_sequence<I...>) {
  return __builtin_shuffle(v, vi{static_cast<int32_t>(I ^ Step)...});
}

template <int Step = W / 2>
inline float hmax(vf v) {
  const vf u = swap_lanes<Step>(v, std::make_index_sequence<W>());
  v = u > v ? u : v;
  if constexpr (Step > 1)
    return hmax<Step / 2>(v);
  else
    return v[0];
}

template <int Step = W / 2>
inline float hsum(vf v) {
  v += swap_lanes<Step>(v, std::make_index_sequence<W>());
  if constexpr (Step > 1)
    return hsum<Step / 2>(v);
  else
    return v[0];
}

// One stage of an in-register transpose of W rows of W floats: between rows x and y = x + B
// (x with bit B clear), swaps the elements whose row and lane differ in bit B. Lane l of x takes
// y's lane l - B where l has bit B, and lane l of y takes x's lane l + B where it has not.
template <int B, size_t... I>
inline void transpose_pair(vf& x, vf& y, std::index_sequence<I...>) {
  const vf lo = __builtin_shuffle(x, y, vi{static_cast<int32_t>((I & B) ? W + I - B : I)...});
  const vf hi = __builtin_shuffle(x, y, vi{static_cast<int32_t>((I & B) ? W + I : I + B)...});
  x = lo;
  y = hi;
}

// r[i][l] becomes r[l][i]: log2(W) stages, each swapping one bit of the row and lane index.
template <int B = 1>
inline void transpose(vf (&r)[W]) {
#pragma GCC unroll 16
  for (int i = 0; i < W; ++i)
    if (!(i & B)) transpose_pair<B>(r[i], r[i + B], std::make_index_sequence<W>());
  if constexpr (2 * B < W) transpose<2 * B>(r);
}

// dst[0 .. n) = scale * src[off .. off + n), widened to fp32 (fp32 rounded to bf16 first when
// `round`: precision="bf16"). One loop per element type, no branch inside: each is a plain loop
// the compiler vectorizes.
inline void load_row(const void* base, int64_t off, bool bf16, bool round, int64_t n, float scale, float* dst) {
  if (bf16) {
    const uint16_t* src = static_cast<const uint16_t*>(base) + off;
    for (int64_t d = 0; d < n; ++d) dst[d] = bf16_bits_to_f32(src[d]) * scale;
  } else if (round) {
    const float* src = static_cast<const float*>(base) + off;
    for (int64_t d = 0; d < n; ++d) dst[d] = bf16_bits_to_f32(f32_to_bf16_bits(src[d])) * scale;
  } else {
    const float* src = static_cast<const float*>(base) + off;
    for (int64_t d = 0; d < n; ++d) dst[d] = src[d] * scale;
  }
}

// Asks for the cache lines of n elements at base + off (in elements) ahead of their use.
inline void prefetch_row(const void* base, int64_t off, bool bf16, int64_t n) {
  const int64_t esz = bf16 ? 2 : 4;
  const char* p = static_cast<const char*>(base) + off * esz;
  for (int64_t b = 0; b < n * esz; b += 64) __builtin_prefetch(p + b);
}

// S[r0 .. r0+RR) x [c0 .. c0 + NC*W) = Q K^T over the D head dims; K^T block rows have NK floats.
template <int NC>
inline void qk_tile(const float* q, int64_t dp, const float* kt, int64_t d_len, float* s, int r0, int c0) {
  vf acc[RR][NC];
#pragma GCC unroll 8
  for (int r = 0; r < RR; ++r)
#pragma GCC unroll 8
    for (int c = 0; c < NC; ++c) acc[r][c] = splat(0.f);
  for (int64_t d = 0; d < d_len; ++d) {
    vf kv[NC];
#pragma GCC unroll 8
    for (int c = 0; c < NC; ++c) kv[c] = loadu(kt + d * NK + c0 + c * W);
#pragma GCC unroll 8
    for (int r = 0; r < RR; ++r) {
      const vf qb = splat(q[(r0 + r) * dp + d]);
#pragma GCC unroll 8
      for (int c = 0; c < NC; ++c) acc[r][c] += qb * kv[c];
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < RR; ++r)
#pragma GCC unroll 8
    for (int c = 0; c < NC; ++c) storeu(s + (r0 + r) * NK + c0 + c * W, acc[r][c]);
}

// O[r0 .. r0+RR) x [c0 .. c0 + NC*W) = alpha * O + P V over the nk keys of the block.
template <int NC>
inline void pv_tile(float* o, int64_t dp, const float* p, const float* v, int64_t nk, const float* alpha, int r0,
                    int64_t c0) {
  vf acc[RR][NC];
#pragma GCC unroll 8
  for (int r = 0; r < RR; ++r) {
    const vf al = splat(alpha[r0 + r]);
#pragma GCC unroll 8
    for (int c = 0; c < NC; ++c) acc[r][c] = loadu(o + (r0 + r) * dp + c0 + c * W) * al;
  }
  for (int64_t j = 0; j < nk; ++j) {
    vf vv[NC];
#pragma GCC unroll 8
    for (int c = 0; c < NC; ++c) vv[c] = loadu(v + j * dp + c0 + c * W);
#pragma GCC unroll 8
    for (int r = 0; r < RR; ++r) {
      const vf pb = splat(p[(r0 + r) * NK + j]);
#pragma GCC unroll 8
      for (int c = 0; c < NC; ++c) acc[r][c] += pb * vv[c];
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < RR; ++r)
#pragma GCC unroll 8
    for (int c = 0; c < NC; ++c) storeu(o + (r0 + r) * dp + c0 + c * W, acc[r][c]);
}

template <int NC>
inline void pv_cols(float* o, int64_t dp, const float* p, const float* v, int64_t nk, const float* alpha, int nrr,
                    int64_t c0) {
  for (int r0 = 0; r0 < nrr; r0 += RR) pv_tile<NC>(o, dp, p, v, nk, alpha, r0, c0);
}

// Output row at element offset `base` = orow[0 .. D) * scale, in the output dtype (bf16 bits or float).
inline void store_out_row(const AttentionArgs& a, int64_t base, const float* orow, int64_t D, float scale) {
  if (a.bf16) {
    uint16_t* out = static_cast<uint16_t*>(a.out) + base;
    for (int64_t d = 0; d < D; ++d) out[d] = f32_to_bf16_bits(orow[d] * scale);
  } else {
    float* out = static_cast<float*>(a.out) + base;
    for (int64_t d = 0; d < D; ++d) out[d] = orow[d] * scale;
  }
}

// Key block kinds.
enum : uint8_t { kSkip = 0, kPlain = 1, kBias = 2, kMask = 3 };

struct Scratch {
  std::vector<float> kt, kr, v, q, s, o, m, l, alpha, bias;
  std::vector<uint8_t> kind;
};

// Where one task's sequence lies: lq query rows and lk key rows, and the offsets (in elements)
// of its first row in q, k, v and out.
struct TaskView {
  int64_t b, h, lq, lk, qoff, koff, voff, ooff;
};

inline TaskView task_view(const AttentionArgs& a, int64_t task) {
  TaskView t;
  t.b = task / a.H;
  t.h = task % a.H;
  if (a.cu_seqlens != nullptr) {
    const int64_t t0 = a.cu_seqlens[t.b];
    t.lq = t.lk = a.cu_seqlens[t.b + 1] - t0;
    t.qoff = t0 * a.q_ss + t.h * a.q_sh;
    t.koff = t0 * a.k_ss + t.h * a.k_sh;
    t.voff = t0 * a.v_ss + t.h * a.v_sh;
    t.ooff = t0 * a.o_ss + t.h * a.o_sh;
  } else {
    t.lq = a.Sq;
    t.lk = a.Sk;
    t.qoff = t.b * a.q_sb + t.h * a.q_sh;
    t.koff = t.b * a.k_sb + t.h * a.k_sh;
    t.voff = t.b * a.v_sb + t.h * a.v_sh;
    t.ooff = t.b * a.o_sb + t.h * a.o_sh;
  }
  return t;
}

// Sets w.kind (one per key block of NK) and w.bias (0 / -inf per key, -inf past lk).
inline void classify_key_blocks(const AttentionArgs& a, const TaskView& t, int64_t nkb, Scratch& w) {
  w.kind.assign(nkb, kPlain);
  w.bias.assign(nkb * NK, 0.f);
  const float* kbias = a.key_bias != nullptr ? a.key_bias + t.b * a.Sk : nullptr;
  for (int64_t kb = 0; kb < nkb; ++kb) {
    bool any_kept = false, all_kept = true;
    for (int64_t j = kb * NK; j < (kb + 1) * NK; ++j) {
      const bool kept = j < t.lk && (kbias == nullptr || kbias[j] == 0.f);
      w.bias[j] = kept ? 0.f : kNegInf;
      any_kept |= kept;
      all_kept &= kept;
    }
    if (a.mask != nullptr)
      w.kind[kb] = kMask;
    else
      w.kind[kb] = !any_kept ? kSkip : all_kept ? kPlain : kBias;
  }
}

// Columns of key block k0 (nk keys) worth computing: up to its last kept key, rounded up to
// `step` (the kernel's column granularity; <= NK since NK is a multiple of it).
inline int64_t block_columns(const Scratch& w, uint8_t kind, int64_t k0, int64_t nk, int64_t step) {
  int64_t last = nk;
  if (kind == kBias)
    while (last > 0 && w.bias[k0 + last - 1] != 0.f) --last;
  return round_up(last, step);
}

// Adds row `row` of the additive mask to the nk scores of key block k0 and sets the rest of the
// NK scores to -inf.
inline void add_mask_row(const AttentionArgs& a, const TaskView& t, int64_t row, int64_t k0, int64_t nk, float* sr) {
  const float* mr = a.mask + t.b * a.m_sb + t.h * a.m_sh + row * a.m_sq + k0 * a.m_sk;
  for (int64_t j = 0; j < nk; ++j) sr[j] += mr[j * a.m_sk];
  for (int64_t j = nk; j < NK; ++j) sr[j] = kNegInf;
}

// The online softmax's state at the start of a query block of `rows` rows: output accumulator
// O = 0 (rows x dp), running max m = -inf, running sum l = 0.
inline void start_query_block(float* o, float* m, float* l, int rows, int64_t dp) {
  std::memset(o, 0, sizeof(float) * rows * dp);
  for (int r = 0; r < rows; ++r) {
    m[r] = kNegInf;
    l[r] = 0.f;
  }
}

// For the kernels that scale S after the matmul (the bf16 dot-product and AMX kernels): scales
// and masks row r of a key block's scores in place and returns the row's maximum scaled score.
// `deferred` (plain blocks with scale > 0): the row is left unscaled for the exp pass to scale,
// and the maximum is scaled here. Rows past nr (padding of the query block) get -inf past nk.
inline float scale_mask_row_max(const AttentionArgs& a, const TaskView& t, const Scratch& blocks, uint8_t kind,
                                bool deferred, int r, int nr, int64_t q0, int64_t k0, int64_t nk, int ncols,
                                float* sr) {
  const vf scale = splat(a.scale);
  if (kind == kMask) {
    for (int c = 0; c < ncols; c += W) storeu(sr + c, loadu(sr + c) * scale);
    if (r < nr)
      add_mask_row(a, t, q0 + r, k0, nk, sr);
    else
      for (int64_t j = nk; j < NK; ++j) sr[j] = kNegInf;
  }
  vf mv = splat(kNegInf);
  for (int c = 0; c < ncols; c += W) {
    vf x = loadu(sr + c);
    if (kind == kBias) {
      x = x * scale + loadu(&blocks.bias[k0 + c]);
      storeu(sr + c, x);
    } else if (kind == kPlain && !deferred) {
      x = x * scale;
      storeu(sr + c, x);
    }
    mv = x > mv ? x : mv;
  }
  return deferred ? hmax(mv) * a.scale : hmax(mv);
}

// noipa: compiled on its own, never inlined or cloned for the caller's thread_local scratch (a
// clone re-derives the scratch's address with __tls_get_addr calls in the inner loops, which
// clobber every vector register; see attention_int8_avx512vnni.cpp).
__attribute__((noipa)) inline void run_task(const AttentionArgs& a, int64_t task, Scratch& w) {
  const TaskView t = task_view(a, task);
  const int64_t lq = t.lq, lk = t.lk, qoff = t.qoff, koff = t.koff, voff = t.voff, ooff = t.ooff;
  if (lq == 0) return;
  const int64_t D = a.D, dp = round_up(D, W);
  const int64_t nkb = (lk + NK - 1) / NK, skp = nkb * NK;
  classify_key_blocks(a, t, nkb, w);

  // K^T per key block and V, widened to fp32, zero-padded.
  w.kt.assign(skp * D, 0.f);
  w.v.assign(skp * dp, 0.f);
  const void* kbase = static_cast<const char*>(a.k) + koff * (a.bf16 ? 2 : 4);
  const void* vbase = static_cast<const char*>(a.v) + voff * (a.bf16 ? 2 : 4);
  // V: one row copy per kept key. K^T: W keys at a time, their rows widened into `kr` (W x dp,
  // zero past D and for keys not kept), then each W x W square transposed in registers and
  // stored as W rows of the block (one key per lane).
  w.kr.resize(W * dp);
  float* kr = w.kr.data();
  for (int64_t kb = 0; kb < nkb; ++kb) {
    if (w.kind[kb] == kSkip) continue;
    const int64_t j1 = (kb + 1) * NK < lk ? (kb + 1) * NK : lk;
    float* ktb = w.kt.data() + kb * NK * D;
    for (int64_t jg = kb * NK; jg < j1; jg += W) {
      for (int jj = 0; jj < W; ++jj) {
        const int64_t j = jg + jj;
        float* row = kr + jj * dp;
        // padding (and keys past lk): zero, whatever k and v hold there
        if (j >= j1 || w.bias[j] != 0.f) {
          std::memset(row, 0, sizeof(float) * dp);
          continue;
        }
        load_row(vbase, j * a.v_ss, a.bf16, a.round_bf16, D, 1.f, w.v.data() + j * dp);
        load_row(kbase, j * a.k_ss, a.bf16, a.round_bf16, D, 1.f, row);
        if (j + W < j1) {  // the same key of the next group: rows far apart defeat the prefetchers
          prefetch_row(kbase, (j + W) * a.k_ss, a.bf16, D);
          prefetch_row(vbase, (j + W) * a.v_ss, a.bf16, D);
        }
        for (int64_t d = D; d < dp; ++d) row[d] = 0.f;
      }
      float* dst = ktb + (jg - kb * NK);
      for (int64_t d0 = 0; d0 < dp; d0 += W) {
        vf sq[W];
#pragma GCC unroll 16
        for (int jj = 0; jj < W; ++jj) sq[jj] = loadu(kr + jj * dp + d0);
        transpose(sq);
        const int nd = static_cast<int>(D - d0 < W ? D - d0 : W);
        for (int i = 0; i < nd; ++i) storeu(dst + (d0 + i) * NK, sq[i]);
      }
    }
  }

  w.q.resize(QB * dp);
  w.s.resize(QB * NK);
  w.o.resize(QB * dp);
  w.m.resize(QB);
  w.l.resize(QB);
  w.alpha.resize(QB);
  const void* qbase = static_cast<const char*>(a.q) + qoff * (a.bf16 ? 2 : 4);
  const int64_t nvec = dp / W, nfull = nvec / CN * CN;

  for (int64_t q0 = 0; q0 < lq; q0 += QB) {
    const int nr = static_cast<int>(lq - q0 < QB ? lq - q0 : QB);
    const int nrr = static_cast<int>(round_up(nr, RR));
    std::memset(w.q.data(), 0, sizeof(float) * nrr * dp);
    for (int r = 0; r < nr; ++r) load_row(qbase, (q0 + r) * a.q_ss, a.bf16, a.round_bf16, D, a.scale, w.q.data() + r * dp);
    start_query_block(w.o.data(), w.m.data(), w.l.data(), nrr, dp);

    for (int64_t kb = 0; kb < nkb; ++kb) {
      const uint8_t kind = w.kind[kb];
      if (kind == kSkip) continue;
      const int64_t k0 = kb * NK;
      const int64_t nk = lk - k0 < NK ? lk - k0 : NK;
      // Past ncols no key is kept; whole vectors, so a short sequence computes only its own keys.
      const int ncols = static_cast<int>(block_columns(w, kind, k0, nk, W));
      const int64_t nkv = nk < ncols ? nk : ncols;
      float* s = w.s.data();
      const float* ktb = w.kt.data() + kb * NK * D;
      for (int r0 = 0; r0 < nrr; r0 += RR) {
        int c0 = 0;
        for (; c0 + CN * W <= ncols; c0 += CN * W) qk_tile<CN>(w.q.data(), dp, ktb, D, s, r0, c0);
        switch ((ncols - c0) / W) {  // the last tile: fewer than CN vectors of keys
          case 0: break;
#if SPARSEBERT_ATTN_CN > 1
          case 1: qk_tile<1>(w.q.data(), dp, ktb, D, s, r0, c0); break;
#endif
#if SPARSEBERT_ATTN_CN > 2
          case 2: qk_tile<2>(w.q.data(), dp, ktb, D, s, r0, c0); break;
#endif
#if SPARSEBERT_ATTN_CN > 3
          case 3: qk_tile<3>(w.q.data(), dp, ktb, D, s, r0, c0); break;
#endif
          default: break;
        }
      }

      if (kind == kBias) {
        for (int r = 0; r < nrr; ++r)
          for (int c = 0; c < ncols; c += W) storeu(s + r * NK + c, loadu(s + r * NK + c) + loadu(&w.bias[k0 + c]));
      } else if (kind == kMask) {
        for (int r = 0; r < nr; ++r) add_mask_row(a, t, q0 + r, k0, nk, s + r * NK);
      }

      // Online softmax: P = exp(S - m_new) in place of S; alpha rescales what O holds.
      for (int r = 0; r < nrr; ++r) {
        float* sr = s + r * NK;
        vf mv = loadu(sr);
        for (int c = W; c < ncols; c += W) {
          const vf x = loadu(sr + c);
          mv = x > mv ? x : mv;
        }
        const float mx = hmax(mv);
        const float mnew = mx > w.m[r] ? mx : w.m[r];
        if (mnew == kNegInf) {  // nothing kept in this row yet
          w.alpha[r] = 1.f;
          for (int c = 0; c < ncols; c += W) storeu(sr + c, splat(0.f));
          continue;
        }
        const float alpha = std::exp(w.m[r] - mnew);
        const vf mb = splat(mnew);
        vf sum = splat(0.f);
        for (int c = 0; c < ncols; c += W) {
          const vf pv = vexp(loadu(sr + c) - mb);
          storeu(sr + c, pv);
          sum += pv;
        }
        w.l[r] = w.l[r] * alpha + hsum(sum);
        w.m[r] = mnew;
        w.alpha[r] = alpha;
      }

      const float* vb = w.v.data() + k0 * dp;
      for (int64_t c = 0; c < nfull; c += CN) pv_cols<CN>(w.o.data(), dp, s, vb, nkv, w.alpha.data(), nrr, c * W);
      switch (nvec - nfull) {
        case 0: break;
#if SPARSEBERT_ATTN_CN > 1
        case 1: pv_cols<1>(w.o.data(), dp, s, vb, nkv, w.alpha.data(), nrr, nfull * W); break;
#endif
#if SPARSEBERT_ATTN_CN > 2
        case 2: pv_cols<2>(w.o.data(), dp, s, vb, nkv, w.alpha.data(), nrr, nfull * W); break;
#endif
#if SPARSEBERT_ATTN_CN > 3
        case 3: pv_cols<3>(w.o.data(), dp, s, vb, nkv, w.alpha.data(), nrr, nfull * W); break;
#endif
        default: break;
      }
    }

    // O / l, written in the output dtype.
    for (int r = 0; r < nr; ++r)
      store_out_row(a, ooff + (q0 + r) * a.o_ss, w.o.data() + r * dp, D, w.l[r] > 0.f ? 1.f / w.l[r] : 0.f);
  }
}

inline void attention_run(const AttentionArgs& a, const int64_t* tasks, int64_t n) {
  thread_local Scratch scratch;
  for (int64_t i = 0; i < n; ++i) run_task(a, tasks[i], scratch);
}

}  // namespace
}  // namespace cpu
}  // namespace sparsebert
