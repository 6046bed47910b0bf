// CPU implementation of sparsebert::attention and sparsebert::attention_varlen: validation, the
// masks reduced to what the kernel reads (a per-key bias for key padding, an fp32 additive mask
// with broadcast strides otherwise), then the (sequence, head) tasks, longest first, pulled by
// torch's threads from a shared counter so that sequences of different lengths balance.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <memory>
#include <numeric>
#include <vector>

#include "attention_kernel.h"
#include "isa.h"

namespace sparsebert {
namespace {

constexpr int64_t kMaxHeadDim = 256;

// bf16 inputs on AMX: tiles (both precisions; the tiles round P as the dot-product kernel does),
// and fp32 inputs at precision="bf16" too. precision="bf16" elsewhere: bf16 dot products where
// the CPU has them, else the fp32 kernel on inputs rounded to bf16 as they are packed
// (args.round_bf16). precision="int8": vpdpbusd where the INT8 kernels use AVX512_VNNI
// (active_int8_dot), the same numbers in plain C++ elsewhere.
cpu::AttentionFn select_kernel(const cpu::AttentionArgs& a) {
  const Isa isa = active_isa();
  if (a.int8)
    return active_int8_dot(isa) == Int8Dot::kVnni512 ? cpu::attention_int8_avx512vnni : cpu::attention_int8_scalar;
  switch (isa) {
    case Isa::kAmx:
      // fp32 inputs at precision="bf16" too: BERT-base 8x128 (12 heads of 64), Xeon with AMX, 2
      // threads, 2.38 ms a layer on vdpbf16ps (half the fp32 FMA rate there), 1.01 on tiles.
      if (a.bf16 || a.round_bf16) return cpu::attention_bf16_amx;
      return cpu::attention_avx512;
    case Isa::kAvx512Bf16: return a.round_bf16 ? cpu::attention_dpbf16_avx512bf16 : cpu::attention_avx512;
    case Isa::kAvx512: return cpu::attention_avx512;
    case Isa::kAvx2: return cpu::attention_avx2;
    case Isa::kScalar: return cpu::attention_scalar;
  }
  TORCH_CHECK(false, "unknown ISA level");
}

void check_qkv_dtypes(const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  TORCH_CHECK_VALUE(q.scalar_type() == at::kFloat || q.scalar_type() == at::kBFloat16, op,
                    " on CPU supports float32 and bfloat16, got q of dtype ", q.scalar_type());
  TORCH_CHECK_VALUE(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(), op,
                    ": q, k and v must have one dtype, got ", q.scalar_type(), ", ", k.scalar_type(), " and ",
                    v.scalar_type());
  TORCH_CHECK_VALUE(q.device().is_cpu() && k.device().is_cpu() && v.device().is_cpu(), op,
                    ": q, k and v must be CPU tensors, got ", q.device(), ", ", k.device(), " and ", v.device());
}

at::Tensor unit_last_stride(const at::Tensor& t) { return t.stride(-1) == 1 ? t : t.contiguous(); }

enum class Precision { kFp32, kBf16, kInt8 };

Precision resolve_precision(const char* op, c10::string_view precision) {
  TORCH_CHECK_VALUE(precision == "fp32" || precision == "bf16" || precision == "int8", op,
                    ": precision must be 'fp32', 'bf16' or 'int8', got '", std::string(precision), "'");
  return precision == "bf16" ? Precision::kBf16 : precision == "int8" ? Precision::kInt8 : Precision::kFp32;
}

float resolve_scale(const char* op, std::optional<double> scale, int64_t D) {
  const double s = scale.has_value() ? *scale : 1.0 / std::sqrt(static_cast<double>(D));
  TORCH_CHECK_VALUE(std::isfinite(s), op, ": scale must be finite, got ", s);
  return static_cast<float>(s);
}

// Runs every task, the most expensive first, on torch's threads. With `home` (per task, a thread
// index), each thread first pulls the tasks of its own pool, then helps with the others' pools:
// a sequence's heads then run mostly on the thread that handles the same tokens in the linear
// layers around attention (whose row-pipelined split gives thread t the t-th share of the rows),
// so its q, k, v and output stay in that thread's caches.
void run_tasks(const cpu::AttentionArgs& args, cpu::AttentionFn fn, std::vector<int64_t> tasks,
               const std::vector<int64_t>& cost, const std::vector<int64_t>& home = {}) {
  std::stable_sort(tasks.begin(), tasks.end(), [&](int64_t x, int64_t y) { return cost[x] > cost[y]; });
  const int64_t n = static_cast<int64_t>(tasks.size());
  const int64_t threads = std::min<int64_t>(at::get_num_threads(), n);
  if (threads <= 1) {
    fn(args, tasks.data(), n);
    return;
  }
  std::vector<std::vector<int64_t>> pools(home.empty() ? 1 : threads);
  for (const int64_t t : tasks) pools[home.empty() ? 0 : std::min<int64_t>(home[t], threads - 1)].push_back(t);
  const int64_t np = static_cast<int64_t>(pools.size());
  std::unique_ptr<std::atomic<int64_t>[]> next(new std::atomic<int64_t>[np]);
  for (int64_t p = 0; p < np; ++p) next[p] = 0;
  at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t me = begin; me < end; ++me)
      for (int64_t k = 0; k < np; ++k) {
        const int64_t p = (me + k) % np, size = static_cast<int64_t>(pools[p].size());
        for (int64_t i = next[p].fetch_add(1); i < size; i = next[p].fetch_add(1)) fn(args, pools[p].data() + i, 1);
      }
  });
}

// What both ops fill alike: data pointers, dtype, sizes and scale (strides and masks: per op).
cpu::AttentionArgs base_args(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
                             int64_t B, int64_t H, int64_t D, float scale, Precision precision) {
  cpu::AttentionArgs a{};
  a.q = q.data_ptr();
  a.k = k.data_ptr();
  a.v = v.data_ptr();
  a.out = out.data_ptr();
  a.bf16 = q.scalar_type() == at::kBFloat16;
  a.round_bf16 = precision == Precision::kBf16;
  a.int8 = precision == Precision::kInt8;
  a.B = B;
  a.H = H;
  a.D = D;
  a.scale = scale;
  return a;
}

void set_strides(const at::Tensor& t, int64_t& sb, int64_t& sh, int64_t& ss) {
  sb = t.stride(0);
  sh = t.stride(1);
  ss = t.stride(2);
}

at::Tensor attention_cpu(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
                         const std::optional<at::Tensor>& mask, std::optional<double> scale,
                         c10::string_view precision) {
  const char* op = "attention";
  const Precision prec = resolve_precision(op, precision);
  check_qkv_dtypes(op, q_in, k_in, v_in);
  TORCH_CHECK_VALUE(q_in.dim() == 4 && k_in.dim() == 4 && v_in.dim() == 4, op,
                    ": q, k and v must be [batch, heads, seq, head_dim], got shapes ", q_in.sizes(), ", ",
                    k_in.sizes(), " and ", v_in.sizes());
  const int64_t B = q_in.size(0), H = q_in.size(1), Sq = q_in.size(2), D = q_in.size(3), Sk = k_in.size(2);
  TORCH_CHECK_VALUE(k_in.size(0) == B && k_in.size(1) == H && k_in.size(3) == D, op,
                    ": k must be [", B, ", ", H, ", seq, ", D, "] to match q ", q_in.sizes(), ", got ",
                    k_in.sizes());
  TORCH_CHECK_VALUE(v_in.sizes() == k_in.sizes(), op, ": v must have k's shape ", k_in.sizes(), ", got ",
                    v_in.sizes());
  TORCH_CHECK_VALUE(D >= 1 && D <= kMaxHeadDim, op, ": head_dim must be in 1..", kMaxHeadDim, ", got ", D);
  const float sc = resolve_scale(op, scale, D);

  at::Tensor key_bias, add_mask;
  std::vector<int64_t> kept(B, Sk);
  if (mask.has_value()) {
    const at::Tensor& m = *mask;
    TORCH_CHECK_VALUE(m.device().is_cpu(), op, ": mask must be a CPU tensor, got ", m.device());
    if (m.dim() == 2) {
      TORCH_CHECK_VALUE(m.size(0) == B && m.size(1) == Sk, op,
                        ": a 2-D mask is a key-padding mask and must be [batch, key_seq] = [", B, ", ", Sk,
                        "], got ", m.sizes());
      TORCH_CHECK_VALUE(m.scalar_type() == at::kBool || at::isIntegralType(m.scalar_type(), false) ||
                            at::isFloatingType(m.scalar_type()),
                        op, ": key-padding mask must be bool, integer or float, got ", m.scalar_type());
      at::Tensor keep = m.ne(0);
      if (m.scalar_type() != at::kBool) {
        TORCH_CHECK_VALUE(m.eq(0).logical_or(m.eq(1)).all().item<bool>(),
                          op, ": a 2-D (key-padding) mask holds 1 (keep) and 0 (padding) only; got other values "
                          "(additive masks are 4-D, broadcastable to [batch, heads, q_seq, key_seq])");
      }
      key_bias = at::zeros({B, Sk}, at::kFloat).masked_fill_(keep.logical_not(), -std::numeric_limits<float>::infinity());
      const at::Tensor counts = keep.sum(1).to(at::kLong).contiguous();
      for (int64_t b = 0; b < B; ++b) kept[b] = counts.data_ptr<int64_t>()[b];
    } else if (m.dim() == 4) {
      for (int64_t i = 0; i < 4; ++i) {
        const int64_t full[4] = {B, H, Sq, Sk};
        TORCH_CHECK_VALUE(m.size(i) == full[i] || m.size(i) == 1, op,
                          ": a 4-D mask must be broadcastable to [batch, heads, q_seq, key_seq] = [", B, ", ", H,
                          ", ", Sq, ", ", Sk, "], got ", m.sizes());
      }
      if (m.scalar_type() == at::kBool) {
        add_mask = at::zeros(m.sizes(), at::kFloat).masked_fill_(m.logical_not(), -std::numeric_limits<float>::infinity());
      } else {
        TORCH_CHECK_VALUE(m.scalar_type() == at::kFloat || m.scalar_type() == q_in.scalar_type(), op,
                          ": an additive mask must be float32 or q's dtype (", q_in.scalar_type(),
                          "), or bool (True = keep); got ", m.scalar_type());
        add_mask = m.to(at::kFloat);
      }
      add_mask = add_mask.expand({B, H, Sq, Sk});
    } else {
      TORCH_CHECK_VALUE(false, op, ": mask must be 2-D (key padding, [batch, key_seq]) or 4-D (broadcastable to "
                        "[batch, heads, q_seq, key_seq]), got ", m.dim(), "-D of shape ", m.sizes());
    }
  }

  at::Tensor q = unit_last_stride(q_in), k = unit_last_stride(k_in), v = unit_last_stride(v_in);
  at::Tensor out = at::empty({B, H, Sq, D}, q.options());
  if (out.numel() == 0) return out;

  cpu::AttentionArgs a = base_args(q, k, v, out, B, H, D, sc, prec);
  a.Sq = Sq;
  a.Sk = Sk;
  set_strides(q, a.q_sb, a.q_sh, a.q_ss);
  set_strides(k, a.k_sb, a.k_sh, a.k_ss);
  set_strides(v, a.v_sb, a.v_sh, a.v_ss);
  set_strides(out, a.o_sb, a.o_sh, a.o_ss);
  if (key_bias.defined()) a.key_bias = key_bias.data_ptr<float>();
  if (add_mask.defined()) {
    a.mask = add_mask.data_ptr<float>();
    a.m_sb = add_mask.stride(0);
    a.m_sh = add_mask.stride(1);
    a.m_sq = add_mask.stride(2);
    a.m_sk = add_mask.stride(3);
  }
  std::vector<int64_t> tasks(B * H), cost(B * H);
  std::iota(tasks.begin(), tasks.end(), 0);
  for (int64_t t = 0; t < B * H; ++t) cost[t] = Sq * (kept[t / H] + 1);
  run_tasks(a, select_kernel(a), std::move(tasks), cost);
  return out;
}

at::Tensor attention_varlen_cpu(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
                                const at::Tensor& cu_seqlens, int64_t max_seqlen, std::optional<double> scale,
                                c10::string_view precision) {
  const char* op = "attention_varlen";
  const Precision prec = resolve_precision(op, precision);
  check_qkv_dtypes(op, q_in, k_in, v_in);
  TORCH_CHECK_VALUE(q_in.dim() == 3 && q_in.sizes() == k_in.sizes() && q_in.sizes() == v_in.sizes(), op,
                    ": q, k and v must be packed tokens [total_tokens, heads, head_dim] of one shape, got ",
                    q_in.sizes(), ", ", k_in.sizes(), " and ", v_in.sizes());
  const int64_t T = q_in.size(0), H = q_in.size(1), D = q_in.size(2);
  TORCH_CHECK_VALUE(D >= 1 && D <= kMaxHeadDim, op, ": head_dim must be in 1..", kMaxHeadDim, ", got ", D);
  TORCH_CHECK_VALUE(cu_seqlens.scalar_type() == at::kInt && cu_seqlens.dim() == 1 && cu_seqlens.numel() >= 1, op,
                    ": cu_seqlens must be a 1-D int32 tensor of batch + 1 offsets, got ", cu_seqlens.scalar_type(),
                    " of shape ", cu_seqlens.sizes());
  TORCH_CHECK_VALUE(cu_seqlens.device().is_cpu(), op, ": cu_seqlens must be a CPU tensor, got ",
                    cu_seqlens.device());
  const at::Tensor cu = cu_seqlens.contiguous();
  const int32_t* c = cu.data_ptr<int32_t>();
  const int64_t B = cu.numel() - 1;
  TORCH_CHECK_VALUE(c[0] == 0, op, ": cu_seqlens must start at 0, got ", c[0]);
  int64_t longest = 0;
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK_VALUE(c[b + 1] >= c[b], op, ": cu_seqlens must be non-decreasing, got cu_seqlens[", b, "] = ", c[b],
                      " > cu_seqlens[", b + 1, "] = ", c[b + 1]);
    longest = std::max<int64_t>(longest, c[b + 1] - c[b]);
  }
  TORCH_CHECK_VALUE(c[B] == T, op, ": cu_seqlens must end at the number of tokens ", T, ", got ", c[B]);
  TORCH_CHECK_VALUE(max_seqlen >= longest, op, ": max_seqlen must be at least the longest sequence (", longest,
                    "), got ", max_seqlen);
  const float sc = resolve_scale(op, scale, D);

  at::Tensor q = unit_last_stride(q_in), k = unit_last_stride(k_in), v = unit_last_stride(v_in);
  at::Tensor out = at::empty({T, H, D}, q.options());
  if (out.numel() == 0 || B == 0) return out;

  cpu::AttentionArgs a = base_args(q, k, v, out, B, H, D, sc, prec);
  a.Sq = a.Sk = max_seqlen;
  a.q_ss = q.stride(0);
  a.q_sh = q.stride(1);
  a.k_ss = k.stride(0);
  a.k_sh = k.stride(1);
  a.v_ss = v.stride(0);
  a.v_sh = v.stride(1);
  a.o_ss = out.stride(0);
  a.o_sh = out.stride(1);
  a.cu_seqlens = c;
  std::vector<int64_t> tasks(B * H), cost(B * H);
  std::iota(tasks.begin(), tasks.end(), 0);
  for (int64_t t = 0; t < B * H; ++t) {
    const int64_t len = c[t / H + 1] - c[t / H];
    cost[t] = len * (len + 1);
  }
  // Home thread of a sequence: the share of the T rows its middle token falls in.
  const int64_t threads = at::get_num_threads();
  std::vector<int64_t> home(B * H);
  for (int64_t t = 0; t < B * H; ++t) home[t] = T > 0 ? (c[t / H] + c[t / H + 1]) * threads / (2 * T) : 0;
  run_tasks(a, select_kernel(a), std::move(tasks), cost, home);
  return out;
}

}  // namespace
}  // namespace sparsebert

TORCH_LIBRARY_IMPL(sparsebert, CPU, m) {
  m.impl("attention", &sparsebert::attention_cpu);
  m.impl("attention_varlen", &sparsebert::attention_varlen_cpu);
}
