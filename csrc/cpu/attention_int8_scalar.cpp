// attention at precision="int8" for CPUs without AVX-512 VNNI (the avx512, avx2 and scalar levels):
// the integers and formulas of the VNNI kernel (attention_int8_avx512vnni.cpp, where they are
// documented) in plain C++, for correctness on every CPU rather than speed. Built for baseline
// x86-64; the helpers come from attention_impl.h at W = 4.
#define SPARSEBERT_ATTN_W 4
#define SPARSEBERT_ATTN_RR 4
#define SPARSEBERT_ATTN_CN 2
#include "attention_impl.h"

namespace sparsebert {
namespace cpu {
namespace {

struct I8Rows {
  std::vector<int8_t> kq, vq, q8, col;
  std::vector<float> x, sk, sv, s, q, o;
  std::vector<int32_t> acc;
  std::vector<uint8_t> p;
};

inline void widen(const void* base, int64_t off, bool bf16, int64_t n, float* dst) {
  load_row(base, off, bf16, false, n, 1.f, dst);
}

inline int32_t quantize_value(float x, float inv) {
  const float r = std::nearbyint(x * inv);  // round half to even
  return static_cast<int32_t>(r < -127.f ? -127.f : r > 127.f ? 127.f : r != r ? -127.f : r);
}

// Symmetric int8 quantization of n values: returns the scale max|x| / 127 (NaN with a NaN) and
// writes q (0 for a zero or NaN row).
template <class T>
inline float quantize(const float* x, int64_t n, int64_t stride, T* q) {
  float amax = 0.f;
  bool nan = false;
  for (int64_t i = 0; i < n; ++i) {
    const float ax = std::fabs(x[i * stride]);
    nan |= ax != ax;
    amax = ax > amax ? ax : amax;
  }
  const float inv = amax > 0.f && !nan ? 127.f / amax : 0.f;
  for (int64_t i = 0; i < n; ++i) q[i] = static_cast<T>(quantize_value(x[i * stride], inv));
  return nan ? std::numeric_limits<float>::quiet_NaN() : amax / 127.f;
}

// noipa: compiled on its own, never inlined or cloned for the caller's thread_local scratch (a
// clone re-derives the scratch's address with __tls_get_addr calls in the inner loops, which
// clobber every vector register; see attention_int8_avx512vnni.cpp).
__attribute__((noipa)) void run_task_i8(const AttentionArgs& a, int64_t task, I8Rows& w, Scratch& blocks) {
  const TaskView t = task_view(a, task);
  if (t.lq == 0) return;
  const int64_t D = a.D, lk = t.lk;
  const int64_t nkb = (lk + NK - 1) / NK;
  classify_key_blocks(a, t, nkb, blocks);
  const int64_t esz = a.bf16 ? 2 : 4;
  const void* kbase = static_cast<const char*>(a.k) + t.koff * esz;
  const void* vbase = static_cast<const char*>(a.v) + t.voff * esz;
  auto kept = [&](int64_t j) { return blocks.kind[j / NK] != kSkip && blocks.bias[j] == 0.f; };

  // K per kept key row; V per column over the kept keys (zero rows elsewhere).
  w.kq.assign(lk * D, 0);
  w.sk.assign(lk, 0.f);
  w.x.assign(lk * D, 0.f);
  for (int64_t j = 0; j < lk; ++j) {
    if (!kept(j)) continue;
    widen(kbase, j * a.k_ss, a.bf16, D, w.x.data());
    w.sk[j] = quantize(w.x.data(), D, 1, w.kq.data() + j * D);
  }
  w.x.assign(lk * D, 0.f);
  for (int64_t j = 0; j < lk; ++j)
    if (kept(j)) widen(vbase, j * a.v_ss, a.bf16, D, w.x.data() + j * D);
  w.vq.assign(lk * D, 0);
  w.sv.assign(D, 0.f);
  w.col.resize(lk);
  for (int64_t d = 0; d < D; ++d) {
    w.sv[d] = quantize(w.x.data() + d, lk, D, w.col.data());
    for (int64_t j = 0; j < lk; ++j) w.vq[j * D + d] = w.col[j];
  }

  w.s.resize(lk);
  w.p.resize(lk);
  w.acc.resize(D);
  w.q.resize(D);
  w.q8.resize(D);
  w.o.resize(D);
  float* q = w.q.data();
  int8_t* q8 = w.q8.data();
  const void* qbase = static_cast<const char*>(a.q) + t.qoff * esz;
  for (int64_t i = 0; i < t.lq; ++i) {
    widen(qbase, i * a.q_ss, a.bf16, D, q);
    const float sq = quantize(q, D, 1, q8) * a.scale;
    float m = kNegInf;
    bool nan = false;
    for (int64_t j = 0; j < lk; ++j) {
      float s;
      if (blocks.kind[j / NK] == kSkip) {
        s = kNegInf;
      } else {
        int32_t dot = 0;
        for (int64_t d = 0; d < D; ++d) dot += static_cast<int32_t>(q8[d]) * w.kq[j * D + d];
        s = static_cast<float>(dot) * sq * w.sk[j];
        if (a.mask != nullptr)
          s += a.mask[t.b * a.m_sb + t.h * a.m_sh + i * a.m_sq + j * a.m_sk];
        else if (blocks.bias[j] != 0.f)
          s = kNegInf;
      }
      w.s[j] = s;
      nan |= s != s;
      m = s > m ? s : m;
    }
    float l = 0.f;
    if (nan) {
      l = std::numeric_limits<float>::quiet_NaN();
    } else if (m != kNegInf) {
      for (int64_t j = 0; j < lk; ++j) {
        const float e = std::exp(w.s[j] - m);
        l += e;
        w.p[j] = static_cast<uint8_t>(std::nearbyint(e * 255.f));
      }
    }
    const float inv = l > 0.f ? 1.f / (255.f * l) : (l == 0.f ? 0.f : l);
    std::fill(w.acc.begin(), w.acc.end(), 0);
    if (l > 0.f)
      for (int64_t j = 0; j < lk; ++j)
        if (w.p[j] != 0)
          for (int64_t d = 0; d < D; ++d) w.acc[d] += static_cast<int32_t>(w.p[j]) * w.vq[j * D + d];
    for (int64_t d = 0; d < D; ++d) w.o[d] = static_cast<float>(w.acc[d]) * w.sv[d] * inv;
    store_out_row(a, t.ooff + i * a.o_ss, w.o.data(), D, 1.f);
  }
}

}  // namespace

void attention_int8_scalar(const AttentionArgs& a, const int64_t* tasks, int64_t n) {
  thread_local I8Rows scratch;
  thread_local Scratch blocks;
  for (int64_t i = 0; i < n; ++i) run_task_i8(a, tasks[i], scratch, blocks);
}

}  // namespace cpu
}  // namespace sparsebert
