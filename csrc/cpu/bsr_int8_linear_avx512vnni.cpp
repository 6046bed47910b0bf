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

namespace sparsebert {
namespace cpu {
namespace {

template <class Y>
inline void store_f32x16(Y* p, __m512 v, __mmask16 k);
template <>
inline void store_f32x16<float>(float* p, __m512 v, __mmask16 k) { _mm512_mask_storeu_ps(p, k, v); }
template <>
inline void store_f32x16<uint16_t>(uint16_t* p, __m512 v, __mmask16 k) { store_bf16x16(p, v, k); }

// acc (int32) -> (acc - row_zero * col_sum) * row_scale * col_scale + bias, stored as Y.
template <class Y>
inline void dequant_store16(Y* p, __m512i acc, __mmask16 k, float row_scale, int32_t row_zero,
                            const float* col_scale, const int32_t* col_sum, const float* bias) {
  const __m512i corr =
      _mm512_sub_epi32(acc, _mm512_mullo_epi32(_mm512_maskz_loadu_epi32(k, col_sum), _mm512_set1_epi32(row_zero)));
  __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(corr), _mm512_set1_ps(row_scale));
  v = _mm512_mul_ps(v, _mm512_maskz_loadu_ps(k, col_scale));
  if (bias) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(k, bias));
  store_f32x16<Y>(p, v, k);
}

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
  static void store_q(Y* p, acc_t a, mask_t k, float row_scale, int32_t row_zero, const float* col_scale,
                      const int32_t* col_sum, const float* bias) {
    dequant_store16<Y>(p, a, k, row_scale, row_zero, col_scale, col_sum, bias);
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
  static void store_q(Y* p, acc_t a, mask_t k, float, int32_t, const float* col_scale, const int32_t*, const float* bias) {
    __m512 v = _mm512_mul_ps(a, _mm512_maskz_loadu_ps(k, col_scale));
    if (bias) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(k, bias));
    store_f32x16<Y>(p, v, k);
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
  for (int64_t m = m0; m < m1; ++m) {
    const int64_t row = m * lda;
    __m512 vmin = _mm512_setzero_ps(), vmax = _mm512_setzero_ps();
    __mmask16 bad = 0;  // min/max drop NaN, so Inf and NaN are caught on their own
    const __m512 abs_mask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
    for (int64_t k = 0; k < K; k += 16) {
      const __mmask16 msk = avx512_mask(static_cast<int>(min_i64(16, K - k)));
      const __m512 v = load16(x, bf16, row + k, msk);
      bad |= _mm512_cmp_ps_mask(_mm512_and_ps(v, abs_mask), _mm512_set1_ps(3.402823466e38f), _CMP_NLE_UQ);
      vmin = _mm512_min_ps(vmin, v);
      vmax = _mm512_max_ps(vmax, v);
    }
    if (bad) {
      scale[m] = __builtin_nanf("");  // the caller raises
      continue;
    }
    float lo = _mm512_reduce_min_ps(vmin), hi = _mm512_reduce_max_ps(vmax);
    if (range) {
      lo = range[0];
      hi = range[1];
    }
    float inv, qmin, zpf;
    if (asymmetric) {
      inv = hi > lo ? 255.f / (hi - lo) : 0.f;
      scale[m] = (hi - lo) / 255.f;
      zpf = _mm_cvtss_f32(_mm_round_ss(_mm_setzero_ps(), _mm_set_ss(-lo * inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
      zpf = zpf < 0.f ? 0.f : (zpf > 255.f ? 255.f : zpf);
      qmin = 0.f;
    } else {
      const float amax = -lo > hi ? -lo : hi;
      inv = amax > 0.f ? 127.f / amax : 0.f;
      scale[m] = amax / 127.f;
      zpf = 128.f;
      qmin = 1.f;
    }
    const int32_t zp = static_cast<int32_t>(zpf);
    zero[m] = zp;
    const __m512 vinv = _mm512_set1_ps(inv);
    const __m512i vzp = _mm512_set1_epi32(zp);
    const __m512i vqmin = _mm512_set1_epi8(static_cast<char>(static_cast<int>(qmin)));
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
