// attention for bf16 with AMX tiles (compiled with the AMX and AVX-512 BF16 flags): bf16 inputs, and
// fp32 inputs at precision="bf16" (rounded to bf16 as they are packed, fp32 output). Both matmuls
// run as bf16 x bf16 -> fp32 tile multiplies; the online softmax runs in AVX-512 fp32 between
// them, with the helpers of attention_impl.h (W = 16).
//
// Per (sequence, head) task, with Dp = head_dim rounded up to 32 (one A-tile row of bf16):
//   K is packed per key block as B tiles of S = Q K^T: [block][Dp / 2][NK][2] (row = one pair of
//   head dims, 16 keys x 2 per 64-byte tile row); V as B tiles of P V: [Sk / 2][Dp][2] (row = one
//   pair of keys). Q (32 rows per block, unscaled) is read as A tiles straight from its packed copy.
//   For each kept key block: S (fp32, tiles C0..C3 = 2 row tiles x 2 key tiles, 32 keys a pass),
//   then scale, mask and the online softmax, P written as bf16 (vcvtneps2bf16; P lies in [0, 1]),
//   then P V into C0..C3 (2 row tiles x 2 head-dim tiles, 32 keys a step), added to the fp32 output
//   accumulator after rescaling it by exp(m_old - m_new).
// Tiles: C 0..3, A 4..5, B 6..7, every tile 16 rows x 64 bytes.
#include <immintrin.h>

#define SPARSEBERT_ATTN_W 16
#define SPARSEBERT_ATTN_RR 6
#define SPARSEBERT_ATTN_CN 4
#define SPARSEBERT_ATTN_NK 256  // the output is rescaled once per key block: few, long blocks
#include "amx_tiles.h"
#include "attention_impl.h"

namespace sparsebert {
namespace cpu {
namespace {

constexpr int QR = 32;  // query rows per block: two 16-row tiles

struct AmxScratch {
  std::vector<uint16_t> kb, vb, q, p;
  std::vector<float> s, o, otmp, m, l, alpha, mnew;
};

// C0..C3 += A4 x B6, A4 x B7, A5 x B6, A5 x B7 (GCC's tile intrinsics need literal tile ids).
inline void dots_2x2() {
  _tile_dpbf16ps(0, 4, 6);
  _tile_dpbf16ps(1, 4, 7);
  _tile_dpbf16ps(2, 5, 6);
  _tile_dpbf16ps(3, 5, 7);
}

inline void store_2x2(float* c, int64_t ldc) {
  const int64_t bytes = ldc * 4;
  _tile_stored(0, c, bytes);
  _tile_stored(1, c + 16, bytes);
  _tile_stored(2, c + 16 * ldc, bytes);
  _tile_stored(3, c + 16 * ldc + 16, bytes);
}

inline void zero_2x2() {
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
}

// An input element as bf16 bits: bf16 inputs as they are, fp32 inputs (precision="bf16") rounded
// as torch's .to(torch.bfloat16) rounds them.
inline uint16_t bf16_of(uint16_t v) { return v; }
inline uint16_t bf16_of(float v) { return f32_to_bf16_bits(v); }

// noipa: compiled on its own, never inlined or cloned for the caller's thread_local scratch (a
// clone re-derives the scratch's address with __tls_get_addr calls in the inner loops, which
// clobber every vector register; see attention_int8_avx512vnni.cpp).
template <class TE>
__attribute__((noipa)) void run_task_amx(const AttentionArgs& a, int64_t task, AmxScratch& w, Scratch& blocks) {
  const TaskView t = task_view(a, task);
  if (t.lq == 0) return;
  const int64_t D = a.D, dp = round_up(D, 32), dp2 = dp / 2;
  const int64_t nkb = (t.lk + NK - 1) / NK, skp = nkb * NK;
  classify_key_blocks(a, t, nkb, blocks);

  // Pack K and V of the kept key blocks (bf16 bits, zero-padded).
  w.kb.assign(skp * dp, 0);
  w.vb.assign(skp * dp, 0);
  const TE* kbase = static_cast<const TE*>(a.k) + t.koff;
  const TE* vbase = static_cast<const TE*>(a.v) + t.voff;
  // Both layouts pair bf16 values into 32-bit words: K (d, d+1) of one key, V (j, j+1) of one dim.
  uint32_t* kb32 = reinterpret_cast<uint32_t*>(w.kb.data());
  uint32_t* vb32 = reinterpret_cast<uint32_t*>(w.vb.data());
  const int64_t dpairs = D / 2;
  for (int64_t kb = 0; kb < nkb; ++kb) {
    if (blocks.kind[kb] == kSkip) continue;
    const int64_t j1 = (kb + 1) * NK < t.lk ? (kb + 1) * NK : t.lk;
    uint32_t* kdst = kb32 + kb * NK * dp2;
    for (int64_t j = kb * NK; j < j1; ++j) {
      if (blocks.bias[j] != 0.f) continue;  // padding: stays zero, whatever k and v hold there
      const TE* kr = kbase + j * a.k_ss;
      const int64_t jj = j - kb * NK;
      for (int64_t p = 0; p < dpairs; ++p)
        kdst[p * NK + jj] = uint32_t(bf16_of(kr[2 * p])) | (uint32_t(bf16_of(kr[2 * p + 1])) << 16);
      if (D & 1) kdst[dpairs * NK + jj] = bf16_of(kr[D - 1]);
    }
    for (int64_t j = kb * NK; j < j1; j += 2) {
      const bool keep0 = blocks.bias[j] == 0.f, keep1 = j + 1 < j1 && blocks.bias[j + 1] == 0.f;
      const TE* v0 = vbase + j * a.v_ss;
      const TE* v1 = v0 + a.v_ss;
      uint32_t* vdst = vb32 + (j / 2) * dp;
      if (keep0 && keep1) {
        for (int64_t d = 0; d < D; ++d) vdst[d] = uint32_t(bf16_of(v0[d])) | (uint32_t(bf16_of(v1[d])) << 16);
      } else if (keep0) {
        for (int64_t d = 0; d < D; ++d) vdst[d] = bf16_of(v0[d]);
      } else if (keep1) {
        for (int64_t d = 0; d < D; ++d) vdst[d] = uint32_t(bf16_of(v1[d])) << 16;
      }
    }
  }

  w.q.resize(QR * dp);
  w.p.resize(QR * NK);
  w.s.resize(QR * NK);
  w.o.resize(QR * dp);
  w.otmp.resize(QR * dp);
  w.m.resize(QR);
  w.l.resize(QR);
  w.alpha.resize(QR);
  w.mnew.resize(QR);
  const TE* qbase = static_cast<const TE*>(a.q) + t.qoff;

  for (int64_t q0 = 0; q0 < t.lq; q0 += QR) {
    const int nr = static_cast<int>(t.lq - q0 < QR ? t.lq - q0 : QR);
    std::fill(w.q.begin(), w.q.end(), uint16_t(0));
    for (int r = 0; r < nr; ++r) {
      const TE* qr = qbase + (q0 + r) * a.q_ss;
      if constexpr (sizeof(TE) == 2)
        std::memcpy(&w.q[r * dp], qr, D * sizeof(uint16_t));
      else
        for (int64_t d = 0; d < D; ++d) w.q[r * dp + d] = bf16_of(qr[d]);
    }
    start_query_block(w.o.data(), w.m.data(), w.l.data(), QR, dp);

    for (int64_t kb = 0; kb < nkb; ++kb) {
      const uint8_t kind = blocks.kind[kb];
      if (kind == kSkip) continue;
      const int64_t k0 = kb * NK;
      const int64_t nk = t.lk - k0 < NK ? t.lk - k0 : NK;
      const int ncols = static_cast<int>(block_columns(blocks, kind, k0, nk, 32));  // whole 32-key steps

      // S = Q K^T, 32 keys a pass.
      const uint16_t* kblk = w.kb.data() + kb * NK * dp;
      for (int j0 = 0; j0 < ncols; j0 += 32) {
        zero_2x2();
        for (int64_t d0 = 0; d0 < dp; d0 += 32) {
          _tile_loadd(4, w.q.data() + d0, dp * 2);
          _tile_loadd(5, w.q.data() + 16 * dp + d0, dp * 2);
          _tile_loadd(6, kblk + ((d0 / 2) * NK + j0) * 2, NK * 4);
          _tile_loadd(7, kblk + ((d0 / 2) * NK + j0 + 16) * 2, NK * 4);
          dots_2x2();
        }
        store_2x2(w.s.data() + j0, NK);
      }

      // Scale and mask in place (for plain blocks with scale > 0 the scale is applied in the
      // exp pass instead), row maxima; then every row's rescale factor at once.
      const bool deferred = kind == kPlain && a.scale > 0.f;
      for (int r = 0; r < QR; ++r)
        w.mnew[r] = scale_mask_row_max(a, t, blocks, kind, deferred, r, nr, q0, k0, nk, ncols, w.s.data() + r * NK);
      for (int r = 0; r < QR; r += W) {
        const vf mo = loadu(&w.m[r]), mb = loadu(&w.mnew[r]);
        const vf mn = mb > mo ? mb : mo;
        const vf al = vexp(mo - mn);
        storeu(&w.alpha[r], mn == kNegInf ? splat(1.f) : al);  // nothing kept yet: O stays 0
        storeu(&w.mnew[r], mn);
      }

      // P = exp(S - m_new) as bf16; l = alpha * l + row sum of P.
      for (int r = 0; r < QR; ++r) {
        const float* sr = w.s.data() + r * NK;
        uint16_t* pr = w.p.data() + r * NK;
        const float mnew = w.mnew[r];
        if (mnew == kNegInf) {
          std::memset(pr, 0, NK * sizeof(uint16_t));
          continue;
        }
        const __m512 mb = _mm512_set1_ps(mnew), sc = _mm512_set1_ps(deferred ? a.scale : 1.f);
        __m512 sum = _mm512_setzero_ps();
        for (int c = 0; c < ncols; c += W) {
          const __m512 pv = vexp_nonpositive(_mm512_fmsub_ps(_mm512_loadu_ps(sr + c), sc, mb));
          sum = _mm512_add_ps(sum, pv);
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(pr + c), (__m256i)_mm512_cvtneps_pbh(pv));
        }
        w.l[r] = w.l[r] * w.alpha[r] + _mm512_reduce_add_ps(sum);
        w.m[r] = mnew;
      }

      // Otmp = P V, 32 head dims a pass, 32 keys a step; O = alpha * O + Otmp.
      const uint16_t* vblk = w.vb.data() + k0 * dp;
      for (int64_t c0 = 0; c0 < dp; c0 += 32) {
        zero_2x2();
        for (int64_t j0 = 0; j0 < ncols; j0 += 32) {
          _tile_loadd(4, w.p.data() + j0, NK * 2);
          _tile_loadd(5, w.p.data() + 16 * NK + j0, NK * 2);
          _tile_loadd(6, vblk + ((j0 / 2) * dp + c0) * 2, dp * 4);
          _tile_loadd(7, vblk + ((j0 / 2) * dp + c0 + 16) * 2, dp * 4);
          dots_2x2();
        }
        store_2x2(w.otmp.data() + c0, dp);
      }
      for (int r = 0; r < QR; ++r) {
        const vf al = splat(w.alpha[r]);
        float* orow = w.o.data() + r * dp;
        const float* trow = w.otmp.data() + r * dp;
        for (int64_t c = 0; c < dp; c += W) storeu(orow + c, loadu(orow + c) * al + loadu(trow + c));
      }
    }

    for (int r = 0; r < nr; ++r) {
      const float inv = w.l[r] > 0.f ? 1.f / w.l[r] : 0.f;
      const float* orow = w.o.data() + r * dp;
      TE* out = static_cast<TE*>(a.out) + t.ooff + (q0 + r) * a.o_ss;
      if constexpr (sizeof(TE) == 2)
        for (int64_t d = 0; d < D; ++d) out[d] = f32_to_bf16_bits(orow[d] * inv);
      else
        for (int64_t d = 0; d < D; ++d) out[d] = orow[d] * inv;
    }
  }
}

}  // namespace

void attention_bf16_amx(const AttentionArgs& a, const int64_t* tasks, int64_t n) {
  thread_local AmxScratch scratch;
  thread_local Scratch blocks;
  TileConfig cfg;
  for (int i = 0; i < 8; ++i) {
    cfg.rows[i] = 16;
    cfg.colsb[i] = 64;
  }
  _tile_loadconfig(&cfg);
  for (int64_t i = 0; i < n; ++i) {
    if (a.bf16)
      run_task_amx<uint16_t>(a, tasks[i], scratch, blocks);
    else
      run_task_amx<float>(a, tasks[i], scratch, blocks);
  }
  _tile_release();
}

}  // namespace cpu
}  // namespace sparsebert
