// attention at precision="int8" on AMX tiles (compiled with the AMX and AVX-512 flags): both
// matmuls as tile dot products, Q K^T with _tile_dpbssd (q_q and k_q signed) and P V with
// _tile_dpbusd (P unsigned, v_q signed); quantization, softmax and the task loop are those of the
// VNNI kernel (attention_int8_impl.h), and the products are exact in int32, so both give the same
// bits. The layouts built there are the tiles' own: a 16-row A tile is 16 byte rows of Q (64 head
// dims) or P (64 keys); a B tile is 16 rows of K's quad words (64 head dims x 16 keys) or V's
// (64 keys x 16 dims). Every tile is 16 rows x 64 bytes: C 0..3 (int32), A 4..5, B 6..7.
//
// BERT-base 8x128 (12 heads of 64), Xeon with AMX, 2 threads: the VNNI kernel issues 32,768
// vpdpbusd a (sequence, head); the tiles do the same products in 128 tile dot products.
#include <immintrin.h>

#define SPARSEBERT_ATTN_W 16
#define SPARSEBERT_ATTN_RR 6
#define SPARSEBERT_ATTN_CN 4
#include "amx_tiles.h"
#include "attention_int8_impl.h"

namespace sparsebert {
namespace cpu {
namespace {

// C (rows R2 ? 32 : 16, columns C2 ? 32 : 16, int32, row stride ldc elements) = sum over the
// steps k of A_k B_k: A_k the byte rows at a + 64 k (stride lda bytes), B_k the 16 quad-word rows
// at b + 16 k ldb (stride ldb bytes; the second column tile 64 bytes on). GCC's tile intrinsics
// need literal tile ids, hence one instance per shape.
template <bool SignedA, bool R2, bool C2>
inline void tile_block(const uint8_t* a, int64_t lda, const uint8_t* b, int64_t ldb, const int64_t* steps,
                       int64_t nsteps, int32_t* c, int64_t ldc) {
  _tile_zero(0);
  if (C2) _tile_zero(1);
  if (R2) _tile_zero(2);
  if (R2 && C2) _tile_zero(3);
  for (int64_t i = 0; i < nsteps; ++i) {
    const uint8_t* as = a + 64 * steps[i];
    const uint8_t* bs = b + 16 * steps[i] * ldb;
    _tile_loadd(4, as, lda);
    if (R2) _tile_loadd(5, as + 16 * lda, lda);
    _tile_loadd(6, bs, ldb);
    if (C2) _tile_loadd(7, bs + 64, ldb);
    if constexpr (SignedA) {
      _tile_dpbssd(0, 4, 6);
      if (C2) _tile_dpbssd(1, 4, 7);
      if (R2) _tile_dpbssd(2, 5, 6);
      if (R2 && C2) _tile_dpbssd(3, 5, 7);
    } else {
      _tile_dpbusd(0, 4, 6);
      if (C2) _tile_dpbusd(1, 4, 7);
      if (R2) _tile_dpbusd(2, 5, 6);
      if (R2 && C2) _tile_dpbusd(3, 5, 7);
    }
  }
  const int64_t bytes = ldc * 4;
  _tile_stored(0, c, bytes);
  if (C2) _tile_stored(1, c + 16, bytes);
  if (R2) _tile_stored(2, c + 16 * ldc, bytes);
  if (R2 && C2) _tile_stored(3, c + 16 * ldc + 16, bytes);
}

// C = A B over the steps for mt row tiles x nt column tiles of 16, two by two.
template <bool SignedA>
void tile_gemm(const uint8_t* a, int64_t lda, const uint8_t* b, int64_t ldb, const int64_t* steps, int64_t nsteps,
               int mt, int nt, int32_t* c, int64_t ldc) {
  for (int i = 0; i < mt; i += 2) {
    const uint8_t* ai = a + 16 * i * lda;
    int32_t* ci = c + 16 * i * ldc;
    const bool r2 = i + 1 < mt;
    for (int j = 0; j < nt; j += 2) {
      const uint8_t* bj = b + 64 * j;
      int32_t* cij = ci + 16 * j;
      if (j + 1 < nt) {
        if (r2)
          tile_block<SignedA, true, true>(ai, lda, bj, ldb, steps, nsteps, cij, ldc);
        else
          tile_block<SignedA, false, true>(ai, lda, bj, ldb, steps, nsteps, cij, ldc);
      } else if (r2) {
        tile_block<SignedA, true, false>(ai, lda, bj, ldb, steps, nsteps, cij, ldc);
      } else {
        tile_block<SignedA, false, false>(ai, lda, bj, ldb, steps, nsteps, cij, ldc);
      }
    }
  }
}

struct AmxMatmuls {
  static constexpr bool kSignedQ = true;
  static constexpr int kRows = 16;
  static constexpr int kKeyStep = 64;
  static constexpr bool kPadQuads = true;

  // The int32 products land in S itself and are scaled there to fp32.
  static void qk(I8Scratch& w, const I8Dims& d, int nrows, int64_t k0, int64_t ncols) {
    w.steps.resize(d.nqp / 16);
    for (int64_t i = 0; i < d.nqp / 16; ++i) w.steps[i] = i;
    float* s = w.s.data();
    int32_t* c = reinterpret_cast<int32_t*>(s + k0);
    tile_gemm<true>(reinterpret_cast<const uint8_t*>(w.q.data()), d.nqp * 4,
                    reinterpret_cast<const uint8_t*>(w.kt.data() + k0), d.skp * 4, w.steps.data(), d.nqp / 16,
                    nrows / 16, static_cast<int>(ncols / 16), c, d.skp);
    for (int r = 0; r < nrows; ++r) {
      const __m512 sqr = _mm512_set1_ps(w.sq[r]);
      float* sr = s + r * d.skp;
      for (int64_t j = k0; j < k0 + ncols; j += 16) {
        const __m512 x = _mm512_cvtepi32_ps(_mm512_loadu_si512(sr + j));
        _mm512_storeu_ps(sr + j, _mm512_mul_ps(_mm512_mul_ps(x, sqr), _mm512_loadu_ps(&w.sk[j])));
      }
    }
  }

  // Every kept key block's 64-key steps (P is zero past its kept columns), then the int32 sums
  // scaled in place to fp32.
  static void pv(I8Scratch& w, const I8Dims& d, const Scratch& blocks, int nrows) {
    w.steps.clear();
    for (int64_t kb = 0; kb < d.nkb; ++kb)
      if (blocks.kind[kb] != kSkip)
        for (int64_t k = kb * NK; k < kb * NK + w.cols[kb]; k += 64) w.steps.push_back(k / 64);
    float* o = w.orow.data();
    tile_gemm<false>(w.p.data(), d.skp, reinterpret_cast<const uint8_t*>(w.vw.data()), d.dp * 4, w.steps.data(),
                     static_cast<int64_t>(w.steps.size()), nrows / 16, static_cast<int>(d.dp / 16),
                     reinterpret_cast<int32_t*>(o), d.dp);
    for (int r = 0; r < nrows; ++r) {
      const __m512 inv = _mm512_set1_ps(pv_row_factor(w.l[r]));
      float* orow = o + r * d.dp;
      for (int64_t c = 0; c < d.dp; c += 16) {
        const __m512 x = _mm512_cvtepi32_ps(_mm512_loadu_si512(orow + c));
        _mm512_storeu_ps(orow + c, _mm512_mul_ps(_mm512_mul_ps(x, _mm512_loadu_ps(&w.sv[c])), inv));
      }
    }
  }
};

}  // namespace

void attention_int8_amx(const AttentionArgs& a, const int64_t* tasks, int64_t n) {
  TileConfig cfg;
  for (int i = 0; i < 8; ++i) {
    cfg.rows[i] = 16;
    cfg.colsb[i] = 64;
  }
  _tile_loadconfig(&cfg);
  attention_int8_run<AmxMatmuls>(a, tasks, n);
  _tile_release();
}

}  // namespace cpu
}  // namespace sparsebert
