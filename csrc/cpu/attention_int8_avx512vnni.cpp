// attention at precision="int8" with vpdpbusd register tiles (AVX-512 VNNI: the avx512bf16 level,
// and the levels below it on CPUs with AVX512_VNNI); the numbers, layouts and the task loop are in
// attention_int8_impl.h. Q's bytes are q_q + 128 (vpdpbusd multiplies unsigned by signed bytes),
// the product corrected by 128 * sum_d k_q[j, d] per key; P is unsigned already and V signed.
#include <immintrin.h>

#define SPARSEBERT_ATTN_W 16
#define SPARSEBERT_ATTN_RR 6
#define SPARSEBERT_ATTN_CN 4
#include "attention_int8_impl.h"

namespace sparsebert {
namespace cpu {
namespace {

// 16 int32 lanes as GCC's own vector type: an array of __m512i accumulators updated through
// _mm512_dpbusd_epi32 (which casts each to v16si and back) was kept in memory by GCC 12, with a
// store and two register moves per vpdpbusd; the builtin on v16si keeps it in registers.
typedef int v16i __attribute__((vector_size(64)));
inline v16i dpbusd(v16i acc, v16i u8, v16i s8) { return __builtin_ia32_vpdpbusd_v16si(acc, u8, s8); }

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
    const __m512 inv = _mm512_set1_ps(pv_row_factor(l[r0 + r]));
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

struct VnniMatmuls {
  static constexpr bool kSignedQ = false;
  static constexpr int kRows = RR;
  static constexpr int kKeyStep = W;  // cols are whole vectors already: nothing read past them
  static constexpr bool kPadQuads = false;

  static void qk(I8Scratch& w, const I8Dims& d, int nrows, int64_t k0, int64_t ncols) {
    const uint32_t* q = w.q.data();
    float* s = w.s.data();
    for (int r0 = 0; r0 < nrows; r0 += RR) {
      int64_t c0 = k0;
      for (; c0 + CN * W <= k0 + ncols; c0 += CN * W)
        qk_tile_i8<CN>(q, d.nqp, w.kt.data(), d.skp, d.nq, w.ksum.data(), w.sq.data(), w.sk.data(), s, r0, c0);
      switch ((k0 + ncols - c0) / W) {  // the last tile: 1..3 vectors of keys
        case 1: qk_tile_i8<1>(q, d.nqp, w.kt.data(), d.skp, d.nq, w.ksum.data(), w.sq.data(), w.sk.data(), s, r0, c0); break;
        case 2: qk_tile_i8<2>(q, d.nqp, w.kt.data(), d.skp, d.nq, w.ksum.data(), w.sq.data(), w.sk.data(), s, r0, c0); break;
        case 3: qk_tile_i8<3>(q, d.nqp, w.kt.data(), d.skp, d.nq, w.ksum.data(), w.sq.data(), w.sk.data(), s, r0, c0); break;
        default: break;
      }
    }
  }

  static void pv(I8Scratch& w, const I8Dims& d, const Scratch& blocks, int nrows) {
    const int64_t nvec = d.dp / W, nfull = nvec / CN * CN;
    const uint8_t* p = w.p.data();
    const int64_t* cols = w.cols.data();
    float* o = w.orow.data();
    for (int64_t c = 0; c < nfull; c += CN)
      pv_cols_i8<CN>(p, d.skp, w.vw.data(), d.dp, blocks, d.nkb, cols, w.sv.data(), w.l.data(), o, nrows, c * W);
    switch (nvec - nfull) {
      case 0: break;
      case 1: pv_cols_i8<1>(p, d.skp, w.vw.data(), d.dp, blocks, d.nkb, cols, w.sv.data(), w.l.data(), o, nrows, nfull * W); break;
      case 2: pv_cols_i8<2>(p, d.skp, w.vw.data(), d.dp, blocks, d.nkb, cols, w.sv.data(), w.l.data(), o, nrows, nfull * W); break;
      case 3: pv_cols_i8<3>(p, d.skp, w.vw.data(), d.dp, blocks, d.nkb, cols, w.sv.data(), w.l.data(), o, nrows, nfull * W); break;
      default: break;
    }
  }
};

}  // namespace

void attention_int8_avx512vnni(const AttentionArgs& a, const int64_t* tasks, int64_t n) {
  attention_int8_run<VnniMatmuls>(a, tasks, n);
}

}  // namespace cpu
}  // namespace sparsebert
