// INT8 bsr_linear for AVX2 (compiled with -mavx2 -mfma): exact, with no saturating step.
//
// vpmaddubsw (u8 x s8 -> saturating s16 pair sums) would overflow here: activations are stored
// as q + 128 (up to 255) and 255 * 127 * 2 > 32767. Instead both operands are widened to int16
// and vpmaddwd adds each pair into an exact int32: the weights' k-quad of one output (4 x s8)
// becomes two int32 lanes holding (w0 x0 + w1 x1) and (w2 x2 + w3 x3), summed in the epilogue.
#include "avx2_traits.h"
#include "quantize_params.h"

namespace sparsebert {
namespace cpu {
namespace {

// Eight outputs per vector, each as two int32 half-sums: `lo` holds outputs 0-3, `hi` 4-7.
struct PairAcc {
  __m256i lo, hi;
};

template <class Y>
struct Avx2Int8 : Avx2Lanes, Avx2Int8Epilogue<Y> {
  using xelem = uint8_t;
  using welem = int8_t;
  using yelem = Y;
  static constexpr bool kQuantized = true, kWholeGroups = true;
  static constexpr int KP = 4, NVMAX = 2;
  // 16 ymm: NV=1 holds 4 x 2 accumulators + 2 widened weights + 1 broadcast; NV=2, 2 rows.
  static constexpr int mr_max(int nv) { return nv == 1 ? 4 : 2; }
  using acc_t = PairAcc;
  using w_t = PairAcc;
  using x_t = __m256i;
  using cols_t = typename Avx2Int8Epilogue<Y>::cols_t;
  static acc_t zero() { return {_mm256_setzero_si256(), _mm256_setzero_si256()}; }
  static w_t load_w(const int8_t* p, mask_t k) {
    const __m256i quads = _mm256_maskload_epi32(reinterpret_cast<const int*>(p), k.v);  // 8 outputs x 4
    return {_mm256_cvtepi8_epi16(_mm256_castsi256_si128(quads)),
            _mm256_cvtepi8_epi16(_mm256_extracti128_si256(quads, 1))};
  }
  static x_t load_x(const uint8_t* p) {
    const uint64_t x16 = uint64_t(p[0]) | uint64_t(p[1]) << 16 | uint64_t(p[2]) << 32 | uint64_t(p[3]) << 48;
    return _mm256_set1_epi64x(static_cast<long long>(x16));
  }
  static x_t load_x_single(const uint8_t* p) { return load_x(p); }
  static acc_t fma(acc_t a, w_t w, x_t x) {
    return {_mm256_add_epi32(a.lo, _mm256_madd_epi16(w.lo, x)), _mm256_add_epi32(a.hi, _mm256_madd_epi16(w.hi, x))};
  }
  static void store_q(Y* p, acc_t a, mask_t k, float row_scale, int32_t row_zero, const cols_t& c, bool) {
    // hadd: [o0 o1 o4 o5 | o2 o3 o6 o7] as 64-bit pairs; the permute puts them in order.
    const __m256i sums = _mm256_permute4x64_epi64(_mm256_hadd_epi32(a.lo, a.hi), 0xd8);
    Avx2Int8Epilogue<Y>::store_sums(p, sums, k, row_scale, row_zero, c);
  }
};

// Weight-only: 8 int8 weights of one input widened to fp32, FMA with the broadcast input.
template <class X, class Y>
struct Avx2WeightOnly : Avx2Lanes {
  using xelem = X;
  using welem = int8_t;
  using yelem = Y;
  static constexpr bool kQuantized = true, kWholeGroups = false;
  static constexpr int KP = 1, NVMAX = 2;
  static constexpr int mr_max(int nv) { return nv == 1 ? 8 : 6; }
  using acc_t = __m256;
  using w_t = __m256;
  using x_t = __m256;
  static acc_t zero() { return _mm256_setzero_ps(); }
  static w_t load_w(const int8_t* p, mask_t k) {
    alignas(8) int8_t b[8] = {};
    for (int i = 0; i < k.lanes && i < 8; ++i) b[i] = p[i];  // AVX2 has no byte-masked load
    int64_t packed;
    std::memcpy(&packed, b, 8);
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_cvtsi64_si128(packed)));
  }
  static x_t load_x(const X* p) {
    if constexpr (sizeof(X) == 2) return _mm256_set1_ps(bf16_bits_to_f32(*p));
    else return _mm256_set1_ps(*p);
  }
  static x_t load_x_single(const X* p) { return load_x(p); }
  static acc_t fma(acc_t a, w_t w, x_t x) { return _mm256_fmadd_ps(w, x, a); }
  struct cols_t {
    __m256 scale, bias;
    bool has_bias, gelu;
  };
  static cols_t load_cols(mask_t k, const float* col_scale, const int32_t*, const float* bias, bool gelu) {
    return {_mm256_maskload_ps(col_scale, k.v), bias ? _mm256_maskload_ps(bias, k.v) : _mm256_setzero_ps(),
            bias != nullptr, gelu};
  }
  static void store_q(Y* p, acc_t a, mask_t k, float, int32_t, const cols_t& c, bool) {
    __m256 v = _mm256_mul_ps(a, c.scale);
    if (c.has_bias) v = _mm256_add_ps(v, c.bias);
    if (c.gelu) v = vgelu(v);
    store8<Y>(p, v, k);
  }
};

// 8 values of a row of x from element `off` as fp32 (bf16 bits widened); the n < 8 valid ones of
// a row's tail go through a zeroed buffer, so nothing past the row is read.
inline __m256 load8(const void* x, bool bf16, int64_t off, int n) {
  if (n >= 8) {
    if (bf16) {
      const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(x) + off));
      return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
    return _mm256_loadu_ps(static_cast<const float*>(x) + off);
  }
  alignas(32) float buf[8] = {};
  for (int i = 0; i < n; ++i)
    buf[i] = bf16 ? bf16_bits_to_f32(static_cast<const uint16_t*>(x)[off + i]) : static_cast<const float*>(x)[off + i];
  return _mm256_load_ps(buf);
}

}  // namespace

// The activation quantizer of the avx2 level: quantize_rows_avx512's arithmetic on 8 lanes (the
// same numbers: min/max over the row with 0 included, one inverse scale, cvtps rounding half to
// even, saturating packs for the clamp to [0, 255], then the floor qmin).
void quantize_rows_avx2(const void* x, int64_t lda, bool bf16, int64_t m0, int64_t m1, int64_t K, uint8_t* out,
                        int64_t ldq, float* scale, int32_t* zero, bool asymmetric, const float* range) {
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const __m256 fmax = _mm256_set1_ps(3.402823466e38f);
  for (int64_t m = m0; m < m1; ++m) {
    const int64_t row = m * lda;
    __m256 vmin = _mm256_setzero_ps(), vmax = _mm256_setzero_ps(), bad = _mm256_setzero_ps();
    for (int64_t k = 0; k < K; k += 8) {
      const __m256 v = load8(x, bf16, row + k, static_cast<int>(min_i64(8, K - k)));
      bad = _mm256_or_ps(bad, _mm256_cmp_ps(_mm256_and_ps(v, abs_mask), fmax, _CMP_NLE_UQ));  // Inf or NaN
      vmin = _mm256_min_ps(vmin, v);
      vmax = _mm256_max_ps(vmax, v);
    }
    if (_mm256_movemask_ps(bad)) {
      scale[m] = __builtin_nanf("");  // the caller raises
      continue;
    }
    alignas(32) float mn[8], mx[8];
    _mm256_store_ps(mn, vmin);
    _mm256_store_ps(mx, vmax);
    float lo = mn[0], hi = mx[0];
    for (int i = 1; i < 8; ++i) {
      lo = mn[i] < lo ? mn[i] : lo;
      hi = mx[i] > hi ? mx[i] : hi;
    }
    if (range) {
      lo = range[0];
      hi = range[1];
    }
    const RowQuant rq = row_quant(lo, hi, asymmetric, &scale[m]);
    zero[m] = rq.zero;
    const __m256 vinv = _mm256_set1_ps(rq.inv);
    const __m256i vzp = _mm256_set1_epi32(rq.zero);
    const __m256i vqmin = _mm256_set1_epi8(static_cast<char>(rq.qmin));
    // 32 values per step: four int32 vectors narrowed by two saturating packs (within 128-bit
    // lanes) and a dword permute back to input order. ldq is a multiple of 64; lanes past K are
    // 0 and become the zero point.
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    uint8_t* q = out + m * ldq;
    for (int64_t k = 0; k < ldq; k += 32) {
      __m256i v[4];
      for (int j = 0; j < 4; ++j) {
        const int64_t kj = k + 8 * j;
        const int n = static_cast<int>(kj < K ? min_i64(8, K - kj) : 0);
        const __m256 xv = n > 0 ? load8(x, bf16, row + kj, n) : _mm256_setzero_ps();
        v[j] = _mm256_add_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(xv, vinv)), vzp);
      }
      const __m256i packed = _mm256_packus_epi16(_mm256_packs_epi32(v[0], v[1]), _mm256_packs_epi32(v[2], v[3]));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + k),
                          _mm256_max_epu8(_mm256_permutevar8x32_epi32(packed, order), vqmin));
    }
  }
}

void int8_weight_only_f32_avx2(const BsrLinearArgs& a, int64_t rb0, int64_t rb1, int64_t m0, int64_t m1) {
  bsr_linear_impl<Avx2WeightOnly<float, float>>(a, rb0, rb1, m0, m1);
}

void int8_weight_only_bf16_avx2(const BsrLinearArgs& a, int64_t rb0, int64_t rb1, int64_t m0, int64_t m1) {
  bsr_linear_impl<Avx2WeightOnly<uint16_t, uint16_t>>(a, rb0, rb1, m0, m1);
}

void bsr_int8_linear_f32_avx2(const BsrLinearArgs& a, int64_t rb0, int64_t rb1, int64_t m0, int64_t m1) {
  bsr_linear_impl<Avx2Int8<float>>(a, rb0, rb1, m0, m1);
}

void bsr_int8_linear_bf16_avx2(const BsrLinearArgs& a, int64_t rb0, int64_t rb1, int64_t m0, int64_t m1) {
  bsr_linear_impl<Avx2Int8<uint16_t>>(a, rb0, rb1, m0, m1);
}

}  // namespace cpu
}  // namespace sparsebert
