// CPU implementations of sparsebert::bsr_int8_linear and sparsebert::int8_linear: validation,
// dynamic per-token quantization of x (in parallel over rows), then the INT8 kernel of the
// active ISA level over the same (block-row group, row group) tasks as bsr_linear.
//
// int8_linear is the dense case of the same kernel: its weight is the BSR packing with blocks
// of (32 outputs, all inputs) and every block stored, so one kernel serves both ops.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "bsr_common.h"
#include "bsr_linear_kernel.h"
#include "isa.h"
#include "layer_norm.h"

namespace sparsebert {
namespace {

// Output features per block row of int8_linear's dense packing: the AMX and AVX-512 tiles
// cover 32 outputs.
constexpr int64_t kDenseBlockRows = 32;

// AMX int8 takes blocks of whole 16-output B tiles, whole k-quads, and A-tile rows of at most
// 64 inputs (bc <= 64, or a multiple of 64); the quantized x buffer is padded to whole blocks,
// so no A tile reads past a row.
bool amx_int8_eligible(const cpu::BsrLinearArgs& a) {
  const int64_t kstep = a.bc < 64 ? a.bc : 64;
  return a.br % 16 == 0 && a.bc % 4 == 0 && a.bc % kstep == 0 && a.M >= 16;
}

// How a kernel takes rows where it runs the row-pipelined split and the fused FFN (the AVX-512
// VNNI and AMX kernels, the ones those paths were measured with). tile: the grain the threads
// split rows by (the VNNI kernel's widest register tile, avx512_mr_max(2); the AMX kernel's pair
// of 16-row tiles), 0 where the kernel takes neither path. chunk: rows a thread carries through
// the fused FFN or a layer and its add + LayerNorm at a time (two VNNI register tiles, one AMX
// pair). Fused FFN, BERT-base 90% 32x32 INT8 at 8x128, 2 threads: 6 to 48 rows gave the same
// forward within 2% on AMD Zen 4 (VNNI), and 32 or 64 the same on a Xeon with AMX.
struct PipelineRows {
  int64_t tile = 0, chunk = 0;
};
constexpr PipelineRows kVnniRows{12, 24}, kAmxRows{32, 32};

struct Int8Kernels {
  cpu::QuantizeRowsFn quantize;
  cpu::BsrLinearFn gemm;
  PipelineRows rows{};
};

// INT8 kernels by level and dot product (see active_int8_dot): AVX-512 VNNI wherever the CPU has
// it from the avx512 level up (AMX int8 first for the shapes it takes), the 256-bit VNNI kernel at
// the avx2 level where the CPU has AVX-VNNI (or AVX-512 VNNI, in the EVEX build), and the AVX2
// kernel (int16 vpmaddwd) without either.
Int8Kernels select_int8(Isa isa, Int8Dot dot, bool f32, const cpu::BsrLinearArgs& args) {
  if (isa == Isa::kScalar)
    return {cpu::quantize_rows_scalar, f32 ? cpu::bsr_int8_linear_f32_scalar : cpu::bsr_int8_linear_bf16_scalar};
  const cpu::QuantizeRowsFn quantize =
      static_cast<int>(isa) >= static_cast<int>(Isa::kAvx512) ? cpu::quantize_rows_avx512 : cpu::quantize_rows_avx2;
  if (isa == Isa::kAmx && amx_int8_eligible(args))
    return {quantize, f32 ? cpu::bsr_int8_linear_f32_amx : cpu::bsr_int8_linear_bf16_amx, kAmxRows};
  switch (dot) {
    case Int8Dot::kVnni512:
      return {quantize, f32 ? cpu::bsr_int8_linear_f32_avx512vnni : cpu::bsr_int8_linear_bf16_avx512vnni,
              kVnniRows};
    case Int8Dot::kVnni256:
      if (cpu_has_avx_vnni())
        return {quantize, f32 ? cpu::bsr_int8_linear_f32_avxvnni : cpu::bsr_int8_linear_bf16_avxvnni};
      return {quantize, f32 ? cpu::bsr_int8_linear_f32_vnni256_evex : cpu::bsr_int8_linear_bf16_vnni256_evex};
    case Int8Dot::kNone:
      break;
  }
  return {quantize, f32 ? cpu::bsr_int8_linear_f32_avx2 : cpu::bsr_int8_linear_bf16_avx2};
}

// Blocks of one output row: the kernel vectorized over rows of x (AVX-512 VNNI levels).
bool rows_kernel_eligible(Int8Dot dot, int64_t br, int64_t bc) {
  return dot == Int8Dot::kVnni512 && br == 1 && bc % 4 == 0;
}

void check_weight_scale(const at::Tensor& weight_scale, int64_t N) {
  TORCH_CHECK_VALUE(weight_scale.device().is_cpu(), "weight_scale must be on the CPU, got ", weight_scale.device());
  TORCH_CHECK_VALUE(weight_scale.scalar_type() == at::kFloat && weight_scale.dim() == 1 &&
                        weight_scale.size(0) == N,
                    "weight_scale must be float32 of shape [", N, "], got ", weight_scale.scalar_type(),
                    " of shape ", weight_scale.sizes());
  const at::Tensor s = weight_scale.contiguous();
  const float* p = s.data_ptr<float>();
  // Every call checks every scale: one branch-free pass the compiler vectorizes (NaN fails both
  // comparisons), and only a rejected tensor is walked again for the first bad value.
  int bad = 0;
  for (int64_t n = 0; n < N; ++n) bad |= !((p[n] >= 0.f) & (p[n] <= std::numeric_limits<float>::max()));
  if (!bad) return;
  for (int64_t n = 0; n < N; ++n)
    TORCH_CHECK_VALUE(std::isfinite(p[n]) && p[n] >= 0.f, "weight_scale[", n, "]=", p[n],
                      " is not a finite non-negative number");
}

void check_weight_sum(const at::Tensor& weight_sum, int64_t N) {
  TORCH_CHECK_VALUE(weight_sum.device().is_cpu(), "weight_sum must be on the CPU, got ", weight_sum.device());
  TORCH_CHECK_VALUE(weight_sum.scalar_type() == at::kInt && weight_sum.dim() == 1 && weight_sum.size(0) == N,
                    "weight_sum must be int32 of shape [", N, "], got ", weight_sum.scalar_type(),
                    " of shape ", weight_sum.sizes());
}

// Row-pipelined calls: each thread takes its own rows of x and, a chunk of rows at a time,
// quantizes them into a small buffer of its own and multiplies that chunk by every block row
// while it is still in L1/L2. The default split (quantize every row, then every thread multiplies
// all rows by its block rows) writes the whole quantized x out and reads it back from L3, and with
// inputs as wide as the outputs or wider that pass was as long as the product: 3072->768 at 90%
// 32x32, 1024 rows, 2 threads, AMD Zen 4, alternating runs: 0.90-1.05 ms pipelined against
// 1.02-1.88 ms (the higher figures in the VM's slow phases, where what one thread wrote costs the
// other most to read), bit for bit the same result. Each thread then reads every stored weight,
// so the weights must fit in L2 beside the chunk. Every output width: each thread then writes
// whole rows of y, the rows the next op (LayerNorm, attention, the next projection) reads on the
// same thread, so no activation crosses between the cores. With the outputs of 2 MiB and more
// streamed (kPipelineStreamYBytes), the 90% BERT-base model (INT8, INT8 attention) ran 1.09x
// faster at 8x128 and 1.04-1.06x on the mixed 8x128 batch than with the FFN up projection split
// by block rows and every pipelined output stored through the caches (AMD Zen 4, 2 threads, 9
// alternating rounds), 1x128 unchanged (0.99x).
constexpr int64_t kPipelineMinRows = 128;
constexpr int64_t kPipelineMaxWeightBytes = int64_t(1) << 20;
// Quantized rows of x per chunk: each chunk reads every stored weight once more, so wide inputs
// need room for enough rows. 3072->768 at 90% 32x32, 1024 rows, 2 threads, AMD Zen 4, 100
// alternating rounds: 64 KiB (12 rows of 3072) 1.006 ms, 128 KiB 0.906, 192 KiB 0.882; 768->2304
// 0.661 / 0.642 / 0.639 ms; at 128 rows all within 2%. The threads split the rows evenly first
// (parallel_for by whole register tiles), then walk their share a chunk at a time.
constexpr int64_t kPipelineChunkBytes = 192 * 1024;
// Pipelined outputs from this size on go out with non-temporal stores. Stored through the caches,
// the fused QKV projection's 9.4 MB at 8x128 took 1.40 ms a call against 0.85 ms streamed (its
// lines read for ownership, then evicted again); at 1x128 (1.2 MB and less) streaming lost 1-3%.
constexpr int64_t kPipelineStreamYBytes = int64_t(2) << 20;

bool row_pipelined(int64_t M, int64_t weight_bytes) {
  return !at::in_parallel_region() && at::get_num_threads() > 1 && M >= kPipelineMinRows &&
         weight_bytes <= kPipelineMaxWeightBytes;
}

// Rows per chunk: a whole number of register tiles, at least one.
int64_t pipeline_chunk_rows(int64_t ldq, int64_t tile_rows) {
  const int64_t r = kPipelineChunkBytes / ldq / tile_rows * tile_rows;
  return r < tile_rows ? tile_rows : r;
}

struct ActQuant {
  bool per_tensor, asymmetric;
  // The zero point of every row in the symmetric modes; a row that cannot be quantized is filled
  // with its mode's zero point (this, or 0 when asymmetric), a row of zeros either way.
  static constexpr uint8_t kSymmetricZero = 128;
  uint8_t bad_row_zero() const { return asymmetric ? 0 : kSymmetricZero; }
};

ActQuant parse_act_quant(c10::string_view mode) {
  if (mode == "per_token") return {false, false};
  if (mode == "per_token_asym") return {false, true};
  if (mode == "per_tensor") return {true, false};
  if (mode == "per_tensor_asym") return {true, true};
  TORCH_CHECK_VALUE(false, "act_quant='", std::string(mode),
                    "' is not a mode; use per_token, per_token_asym, per_tensor or per_tensor_asym");
}

int parse_activation(c10::string_view activation) {
  if (activation == "none") return cpu::kActNone;
  if (activation == "gelu") return cpu::kActGelu;
  TORCH_CHECK_VALUE(false, "activation='", std::string(activation), "' is not one; use none or gelu");
}

// One validated INT8 linear: its call (x, y, weights), the kernels of the active ISA level for
// it, the quantization mode, and the per-output factors in the kernel arguments.
struct Int8Prep {
  LinearCall call;
  ActQuant aq;
  Isa isa;
  Int8Dot dot;
  Int8Kernels kern;
  at::Tensor cs, sums;  // contiguous weight_scale and weight_sum, which call.args points into
  int64_t nb = 0, ldq = 0;
};

Int8Prep prepare_int8(const at::Tensor& x, const at::Tensor& values, const at::Tensor& weight_scale,
                      const at::Tensor& weight_sum, const at::Tensor& crow, const at::Tensor& col,
                      const std::optional<at::Tensor>& bias, int64_t N, int64_t K, int64_t br, int64_t bc,
                      c10::string_view act_quant, c10::string_view activation) {
  Int8Prep p;
  p.aq = parse_act_quant(act_quant);
  const int act = parse_activation(activation);
  TORCH_CHECK_VALUE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16,
                    "INT8 linear on CPU takes float32 or bfloat16 activations, got ", x.scalar_type());
  TORCH_CHECK_VALUE(values.scalar_type() == at::kChar, "int8 weights must be torch.int8, got ",
                    values.scalar_type());
  p.call = prepare_linear("INT8 linear", x, values, crow, col, bias, N, K, br, bc);
  const int64_t ncb = ceil_div(K, bc), kb = ceil_div(bc, 4);
  p.nb = ceil_div(N, br);
  TORCH_CHECK_VALUE(values.dim() == 4 && values.size(1) == kb && values.size(2) == br && values.size(3) == 4,
                    "int8 weights must have shape [nnzb, ", kb, ", ", br, ", 4] for blocks (", br, ", ", bc,
                    "), got ", values.sizes());
  check_indices(p.call.crow, p.call.col, p.nb, ncb, values.size(0));
  check_weight_scale(weight_scale, N);
  check_weight_sum(weight_sum, N);
  // Quantized activations, rows padded past the last block column (whole k-quads and whole
  // AMX A-tile rows read zeros there) to a cache-line multiple.
  p.ldq = ceil_div(ncb * bc + 4, 64) * 64;
  p.isa = active_isa();  // read once per call (they look at SPARSEBERT_ISA and SPARSEBERT_VNNI)
  p.dot = active_int8_dot(p.isa);
  p.kern = select_int8(p.isa, p.dot, x.scalar_type() == at::kFloat, p.call.args);
  p.cs = weight_scale.contiguous();
  p.sums = weight_sum.contiguous();
  cpu::BsrLinearArgs& args = p.call.args;
  args.col_scale = p.cs.data_ptr<float>();
  args.col_sum = p.sums.data_ptr<int32_t>();
  args.activation = act;
  args.symmetric = !p.aq.asymmetric;
  return p;
}

// The residual add + LayerNorm after an INT8 layer (bsr_int8_linear_add_layer_norm, and
// bsr_int8_ffn with norm_weight): add_layer_norm(y, residual, weight, bias, eps) on rows of y as
// they are computed (apply), or on the whole of y where the rows are not pipelined (whole). The
// tensors are validated by the caller; rows are n elements of the residual's dtype.
class NormEpilogue {
 public:
  NormEpilogue(const at::Tensor& residual, const at::Tensor& weight, const at::Tensor& bias, double eps, int64_t n)
      : residual_(residual), weight_(weight), bias_(bias), eps_(eps), rc_(residual.contiguous()),
        w_(weight.to(at::kFloat).contiguous()), b_(bias.to(at::kFloat).contiguous()),
        rows_(select_add_layer_norm()), esz_(static_cast<int64_t>(residual.element_size())) {
    ln_.bf16 = residual.scalar_type() == at::kBFloat16;
    ln_.weight = w_.data_ptr<float>();
    ln_.bias = b_.data_ptr<float>();
    ln_.eps = static_cast<float>(eps);
    ln_.n = n;
  }

  // Rows [r0, r0 + rows) of the result: y's rows (x, n apart) plus the residual's, into out.
  void apply(const void* x, int64_t r0, int64_t rows, void* out) const {
    cpu::AddLayerNormArgs l = ln_;
    l.x = x;
    l.residual = static_cast<const char*>(rc_.data_ptr()) + r0 * ln_.n * esz_;
    l.out = out;
    rows_(l, 0, rows);
  }

  // The whole of y (the residual's shape) through add_layer_norm, as its own op would run it.
  at::Tensor whole(const at::Tensor& y) const { return add_layer_norm_cpu(y, residual_, weight_, bias_, eps_); }

 private:
  at::Tensor residual_, weight_, bias_;
  double eps_;
  at::Tensor rc_, w_, b_;
  cpu::AddLayerNormArgs ln_{};
  cpu::AddLayerNormFn rows_;
  int64_t esz_;
};

// Where a LayerNorm follows, the pipelined path multiplies PipelineRows::chunk rows at a time: their
// outputs go to a buffer of the thread's own ([24, N] fp32 with the VNNI kernel, 72 KiB for
// BERT-base's 768; [32, N] with AMX), and through the add + LayerNorm row kernel into y while they
// are in L1/L2, as in the fused FFN.

// A validated INT8 linear (prepare_int8) on its x; with norm, its rows then go through the
// residual add + LayerNorm, in the same pass where the rows are pipelined.
at::Tensor run_int8(Int8Prep& prep, const NormEpilogue* norm = nullptr) {
  LinearCall& call = prep.call;
  const at::Tensor& x = call.x2;
  const int64_t N = call.args.N, K = call.args.K, br = call.args.br, bc = call.args.bc;
  const ActQuant aq = prep.aq;
  const Int8Dot dot = prep.dot;
  const Int8Kernels kern = prep.kern;
  const int64_t nb = prep.nb, ldq = prep.ldq;
  // Where the rows are not pipelined, the add + LayerNorm runs after the linear, as its own op
  // would: the same row kernel on the same values.
  const auto finish = [&] {
    return norm ? norm->whole(call.result()) : call.result();
  };
  if (call.empty()) return finish();
  const int64_t M = call.args.M;

  const bool pipelined = kern.rows.tile > 0 && !rows_kernel_eligible(dot, br, bc) && row_pipelined(M, call.values.numel());
  at::Tensor q = at::empty({pipelined ? 0 : M, ldq}, x.options().dtype(at::kByte));
  at::Tensor row_scale = at::empty({M}, x.options().dtype(at::kFloat));
  at::Tensor row_zero = at::empty({M}, x.options().dtype(at::kInt));

  cpu::BsrLinearArgs& args = call.args;
  args.x = q.data_ptr();  // the kernel reads the quantized activations, not x
  args.lda = ldq;
  args.row_scale = row_scale.data_ptr<float>();
  args.row_zero = row_zero.data_ptr<int32_t>();

  const bool bf16 = x.scalar_type() == at::kBFloat16;
  const void* xp = call.x2.data_ptr();
  const int64_t lda = call.x2.stride(0);
  uint8_t* qp = q.data_ptr<uint8_t>();
  float* sp = row_scale.data_ptr<float>();
  int32_t* zp = row_zero.data_ptr<int32_t>();
  // Per tensor: one range for every row, including 0 so that zero stays exact.
  float range[2] = {0.f, 0.f};
  if (aq.per_tensor && K > 0) {
    const auto [lo, hi] = at::aminmax(call.x2);
    range[0] = std::min(0.f, lo.item<float>());
    range[1] = std::max(0.f, hi.item<float>());
  }
  const float* rp = aq.per_tensor ? range : nullptr;
  const int64_t xbytes = bf16 ? 2 : 4;
  // Rows [m0, m1) of x into `out` (row m0 first) and their scales and zero points from sp + m0,
  // zp + m0. A row with Inf or NaN keeps its NaN scale (the call raises once the region is over);
  // its values are set to its mode's zero point (a row of zeros) so that nothing reads unwritten
  // memory before that.
  const uint8_t bad_zero = aq.bad_row_zero();
  const auto quantize_rows = [&](int64_t m0, int64_t m1, uint8_t* out) {
    const void* x0 = static_cast<const char*>(xp) + m0 * lda * xbytes;
    kern.quantize(x0, lda, bf16, 0, m1 - m0, K, out, ldq, sp + m0, zp + m0, aq.asymmetric, rp);
    for (int64_t m = m0; m < m1; ++m) {
      if (std::isnan(sp[m])) {
        zp[m] = bad_zero;
        std::memset(out + (m - m0) * ldq, bad_zero, ldq);
      }
    }
  };
  const auto quantize = [&](int64_t m0, int64_t m1) { quantize_rows(m0, m1, qp + m0 * ldq); };
  const auto check_quantized = [&] {
    for (int64_t m = 0; m < M; ++m)
      TORCH_CHECK_VALUE(!std::isnan(sp[m]), "x holds Inf or NaN in row ", m,
                        " (of the input flattened to [", M, ", ", K, "]): it cannot be quantized");
  };
  if (pipelined) {
    // Each chunk is a call of its own on rows [c0, c0 + rows): x from the thread's buffer, y,
    // the row scales and zero points offset to those rows; a row that cannot be quantized is
    // multiplied as zeros and the call raises once every thread is done, as below.
    const int64_t tile = kern.rows.tile;
    const int64_t chunk = norm ? kern.rows.chunk : pipeline_chunk_rows(ldq, tile);
    const int64_t ysz = static_cast<int64_t>(call.y.element_size());
    const bool stream = !norm && M * N * ysz >= kPipelineStreamYBytes;
    at::parallel_for(0, M, tile, [&](int64_t b, int64_t e) {
      thread_local std::vector<uint8_t> qbuf;
      thread_local std::vector<char> ybuf;
      qbuf.resize(chunk * ldq);
      if (norm) ybuf.resize(chunk * N * ysz);
      for (int64_t c0 = b; c0 < e; c0 += chunk) {
        const int64_t rows = std::min(chunk, e - c0);
        quantize_rows(c0, c0 + rows, qbuf.data());
        cpu::BsrLinearArgs sub = args;
        char* yrows = static_cast<char*>(args.y) + c0 * args.ldy * ysz;
        sub.x = qbuf.data();
        sub.M = rows;
        sub.y = norm ? static_cast<void*>(ybuf.data()) : yrows;
        sub.row_scale = sp + c0;
        sub.row_zero = zp + c0;
        sub.stream_y = stream;
        kern.gemm(sub, 0, nb, 0, rows);
        if (norm) norm->apply(ybuf.data(), c0, rows, yrows);
      }
    });
    check_quantized();
    return call.result();
  }
  if (!rows_kernel_eligible(dot, br, bc)) {
    // Quantization and the GEMM in one parallel region; a row that cannot be quantized is
    // multiplied as zeros and the call raises before anything is returned.
    run_bsr_tasks_after(args, nb, kern.gemm, quantize);
    check_quantized();
    return finish();
  }
  // One-output blocks: quantize, transpose to quad-major order, then the kernel vectorized over rows.
  // (All three in one parallel region, each thread transposing its own 16-row groups as it
  // quantizes them, measured the same: 90% 1x4 at 128 rows, 0.284-0.296 / 0.292-0.315 ms against
  // 0.293-0.308 / 0.294-0.309 on the two BERT-base FFN shapes, Xeon with AMX.)
  at::parallel_for(0, M, 16, quantize);
  check_quantized();
  const int64_t quads = ldq / 4, ldx = ceil_div(M, 16) * 16;
  at::Tensor xt = at::empty({quads, ldx}, x.options().dtype(at::kInt));
  uint32_t* xtp = reinterpret_cast<uint32_t*>(xt.data_ptr<int32_t>());
  at::parallel_for(0, ceil_div(quads, 16), 1, [&](int64_t c0, int64_t c1) {
    cpu::transpose_quads_avx512(qp, ldq, M, quads, xtp, ldx, c0 * 16, std::min(quads, c1 * 16));
  });
  args.x = xtp;
  args.lda = ldx;
  run_bsr_tasks(args, nb, x.scalar_type() == at::kFloat ? cpu::bsr_int8_linear_rows_f32_avx512vnni
                                                        : cpu::bsr_int8_linear_rows_bf16_avx512vnni);
  return finish();
}

at::Tensor int8_core(const at::Tensor& x, const at::Tensor& values, const at::Tensor& weight_scale,
                     const at::Tensor& weight_sum, const at::Tensor& crow, const at::Tensor& col,
                     const std::optional<at::Tensor>& bias, int64_t N, int64_t K, int64_t br, int64_t bc,
                     c10::string_view act_quant, c10::string_view activation) {
  Int8Prep prep = prepare_int8(x, values, weight_scale, weight_sum, crow, col, bias, N, K, br, bc, act_quant,
                               activation);
  return run_int8(prep);
}

// The fused FFN takes PipelineRows::chunk rows of the hidden activation at a time on each thread
// ([24, hidden] fp32 with the VNNI kernel, 288 KiB for BERT-base; [32, hidden] with AMX): they stay
// in L2 between the up projection that writes them and the quantizer that reads them.

// y = down(up(x)), each an INT8 linear (up's activation in its epilogue), in one pass per chunk of
// rows on each thread: quantize x's rows, multiply them by every block row of up into a buffer
// of the thread's own, quantize that, multiply by every block row of down into y. The hidden
// activation never leaves the core's caches (BERT-base at 8x128: 12.6 MB of fp32 written out and
// read back twice per layer otherwise), and each result is bit for bit that of the two ops one
// after the other: the same quantizers and kernels on the same rows. Taken where the row-pipelined
// split would be taken for both layers at once (their weights together in L2, VNNI kernels);
// otherwise the two ops run one after the other. Per-token quantization only (a per-tensor range
// would need every hidden row first). With norm_weight and norm_bias, each chunk's rows then go
// through add_layer_norm's row kernel with x as the residual (BERT's BertOutput), while in L1.
at::Tensor bsr_int8_ffn_cpu(const at::Tensor& x, const at::Tensor& up_values, const at::Tensor& up_weight_scale,
                            const at::Tensor& up_weight_sum, const at::Tensor& up_crow, const at::Tensor& up_col,
                            const std::optional<at::Tensor>& up_bias, at::IntArrayRef up_shape,
                            at::IntArrayRef up_block, const at::Tensor& down_values,
                            const at::Tensor& down_weight_scale, const at::Tensor& down_weight_sum,
                            const at::Tensor& down_crow, const at::Tensor& down_col,
                            const std::optional<at::Tensor>& down_bias, at::IntArrayRef down_shape,
                            at::IntArrayRef down_block, c10::string_view act_quant, c10::string_view activation,
                            const std::optional<at::Tensor>& norm_weight, const std::optional<at::Tensor>& norm_bias,
                            double norm_eps) {
  for (const auto& [name, v] : {std::pair<const char*, at::IntArrayRef>{"up_shape", up_shape}, {"down_shape", down_shape}})
    TORCH_CHECK_VALUE(v.size() == 2 && v[0] >= 0 && v[1] >= 0, name, " must be (out_features, in_features) >= 0, got ", v);
  for (const auto& [name, v] : {std::pair<const char*, at::IntArrayRef>{"up_block", up_block}, {"down_block", down_block}})
    TORCH_CHECK_VALUE(v.size() == 2 && v[0] > 0 && v[1] > 0, name, " must be a pair of positive ints, got ", v);
  TORCH_CHECK_VALUE(down_shape[1] == up_shape[0], "down's in_features (", down_shape[1],
                    ") must equal up's out_features (", up_shape[0], ")");
  const int64_t H = up_shape[0];
  Int8Prep up = prepare_int8(x, up_values, up_weight_scale, up_weight_sum, up_crow.contiguous(), up_col.contiguous(),
                             up_bias, H, up_shape[1], up_block[0], up_block[1], act_quant, activation);
  // down validated on a hidden activation of no rows; its rows are set below.
  Int8Prep down = prepare_int8(at::empty({0, H}, x.options()), down_values, down_weight_scale, down_weight_sum,
                               down_crow.contiguous(), down_col.contiguous(), down_bias, down_shape[0], H,
                               down_block[0], down_block[1], act_quant, "none");
  TORCH_CHECK_VALUE(!up.aq.per_tensor, "act_quant='", std::string(act_quant),
                    "' is not fused by bsr_int8_ffn; use per_token or per_token_asym");
  const int64_t M = up.call.args.M, N = down_shape[0];
  const bool norm = norm_weight.has_value() && norm_weight->defined();
  TORCH_CHECK_VALUE(norm == (norm_bias.has_value() && norm_bias->defined()),
                    "norm_weight and norm_bias are given together or not at all");
  std::optional<NormEpilogue> ep;
  if (norm) {
    TORCH_CHECK_VALUE(N == up_shape[1], "the residual add needs down's out_features (", N,
                      ") to equal up's in_features (", up_shape[1], ")");
    // The rest (dtypes, shapes, eps) as add_layer_norm checks it, on a row of no data.
    add_layer_norm_cpu(at::empty({0, N}, x.options()), at::empty({0, N}, x.options()), *norm_weight, *norm_bias,
                       norm_eps);
    ep.emplace(x, *norm_weight, *norm_bias, norm_eps, N);  // x is the residual
  }
  // down's kernel for M rows (AMX takes a layer by its blocks and rows: it may take one of the two)
  down.call.args.M = M;
  down.kern = select_int8(down.isa, down.dot, x.scalar_type() == at::kFloat, down.call.args);
  const bool fused = M > 0 && H > 0 && N > 0 && up.kern.rows.tile > 0 && down.kern.rows.tile > 0 &&
                     !rows_kernel_eligible(up.dot, up_block[0], up_block[1]) &&
                     !rows_kernel_eligible(up.dot, down_block[0], down_block[1]) &&
                     row_pipelined(M, up_values.numel() + down_values.numel());
  if (!fused) {
    const at::Tensor h = run_int8(up);  // validated above
    const at::Tensor y = int8_core(h, down_values, down_weight_scale, down_weight_sum, down_crow.contiguous(),
                                   down_col.contiguous(), down_bias, N, H, down_block[0], down_block[1], act_quant,
                                   "none");
    return norm ? ep->whole(y) : y;
  }
  std::vector<int64_t> out_sizes = up.call.out_sizes;
  out_sizes.back() = N;
  at::Tensor y = at::empty({M, N}, x.options());
  const bool bf16 = x.scalar_type() == at::kBFloat16;
  const int64_t xbytes = bf16 ? 2 : 4;
  const at::Tensor& x2 = up.call.x2;
  const void* xp = x2.data_ptr();
  const int64_t lda = x2.stride(0), K = up_shape[1];
  const bool stream = !norm && M * N * xbytes >= kPipelineStreamYBytes;
  // Rows whose x (bad_x) or hidden activation (bad_h) cannot be quantized: computed as zeros,
  // the call raises once every thread is done.
  std::atomic<int64_t> bad_x{M}, bad_h{M};
  const auto note = [](std::atomic<int64_t>& bad, int64_t m) {
    int64_t cur = bad.load();
    while (m < cur && !bad.compare_exchange_weak(cur, m)) {
    }
  };
  const int64_t chunk = std::max(up.kern.rows.chunk, down.kern.rows.chunk);
  at::parallel_for(0, M, chunk, [&](int64_t b, int64_t e) {
    thread_local std::vector<uint8_t> qx, qh;
    thread_local std::vector<char> hbuf, ybuf;
    thread_local std::vector<float> sx, sh;
    thread_local std::vector<int32_t> zx, zh;
    qx.resize(chunk * up.ldq);
    qh.resize(chunk * down.ldq);
    hbuf.resize(chunk * H * xbytes);
    if (norm) ybuf.resize(chunk * N * xbytes);
    sx.resize(chunk);
    sh.resize(chunk);
    zx.resize(chunk);
    zh.resize(chunk);
    // Rows [c0, c0 + rows) of src into p's quantized layout; a row that cannot be quantized is
    // noted in bad and multiplied as zeros.
    const auto quantize = [&](const Int8Prep& p, const void* src, int64_t ld, int64_t k, uint8_t* q, float* sc,
                              int32_t* zp, int64_t c0, int64_t rows, std::atomic<int64_t>& bad) {
      p.kern.quantize(src, ld, bf16, 0, rows, k, q, p.ldq, sc, zp, p.aq.asymmetric, nullptr);
      const uint8_t bad_zero = p.aq.bad_row_zero();
      for (int64_t r = 0; r < rows; ++r)
        if (std::isnan(sc[r])) {
          note(bad, c0 + r);
          zp[r] = bad_zero;
          std::memset(q + r * p.ldq, bad_zero, p.ldq);
        }
    };
    // p's layer on `rows` quantized rows q, every block row, into out (ldy apart).
    const auto gemm = [](const Int8Prep& p, const uint8_t* q, float* sc, int32_t* zp, int64_t rows, void* out,
                         int64_t ldy, bool stream_out) {
      cpu::BsrLinearArgs a = p.call.args;
      a.x = q;
      a.lda = p.ldq;
      a.M = rows;
      a.y = out;
      a.ldy = ldy;
      a.row_scale = sc;
      a.row_zero = zp;
      a.stream_y = stream_out;
      p.kern.gemm(a, 0, p.nb, 0, rows);
    };
    for (int64_t c0 = b; c0 < e; c0 += chunk) {
      const int64_t rows = std::min(chunk, e - c0);
      quantize(up, static_cast<const char*>(xp) + c0 * lda * xbytes, lda, K, qx.data(), sx.data(), zx.data(), c0,
               rows, bad_x);
      gemm(up, qx.data(), sx.data(), zx.data(), rows, hbuf.data(), H, false);
      quantize(down, hbuf.data(), H, H, qh.data(), sh.data(), zh.data(), c0, rows, bad_h);
      char* yrows = static_cast<char*>(y.data_ptr()) + c0 * N * xbytes;
      gemm(down, qh.data(), sh.data(), zh.data(), rows, norm ? static_cast<void*>(ybuf.data()) : yrows, N, stream);
      if (norm) ep->apply(ybuf.data(), c0, rows, yrows);
    }
  });
  TORCH_CHECK_VALUE(bad_x.load() == M, "x holds Inf or NaN in row ", bad_x.load(), " (of the input flattened to [", M,
                    ", ", K, "]): it cannot be quantized");
  TORCH_CHECK_VALUE(bad_h.load() == M, "the FFN's hidden activation (up's output) holds Inf or NaN in row ",
                    bad_h.load(), " (of ", M, "): it cannot be quantized");
  return y.view(out_sizes);
}

// add_layer_norm(bsr_int8_linear(x, ...), residual, norm_weight, norm_bias, norm_eps) in one pass
// where the rows are pipelined (run_int8): each thread's chunk of rows goes through the add +
// LayerNorm while it is in cache. Bit for bit the two ops.
at::Tensor bsr_int8_linear_add_layer_norm_cpu(const at::Tensor& x, const at::Tensor& values,
                                              const at::Tensor& weight_scale, const at::Tensor& weight_sum,
                                              const at::Tensor& crow_indices, const at::Tensor& col_indices,
                                              const std::optional<at::Tensor>& bias, at::IntArrayRef shape,
                                              at::IntArrayRef block_size, c10::string_view act_quant,
                                              const at::Tensor& residual, const at::Tensor& norm_weight,
                                              const at::Tensor& norm_bias, double norm_eps) {
  TORCH_CHECK_VALUE(block_size.size() == 2 && block_size[0] > 0 && block_size[1] > 0,
                    "block_size must be a pair of positive ints, got ", block_size);
  TORCH_CHECK_VALUE(shape.size() == 2 && shape[0] >= 0 && shape[1] >= 0,
                    "shape must be (out_features, in_features) >= 0, got ", shape);
  const int64_t N = shape[0];
  Int8Prep prep = prepare_int8(x, values, weight_scale, weight_sum, crow_indices.contiguous(),
                               col_indices.contiguous(), bias, N, shape[1], block_size[0], block_size[1], act_quant,
                               "none");
  TORCH_CHECK_VALUE(residual.sizes() == at::IntArrayRef(prep.call.out_sizes),
                    "bsr_int8_linear_add_layer_norm: residual must have the linear's output shape ",
                    at::IntArrayRef(prep.call.out_sizes), ", got ", residual.sizes());
  // The rest (dtypes, devices, weight and bias shapes, eps) as add_layer_norm checks it, on rows of
  // no data.
  add_layer_norm_cpu(at::empty({0, N}, x.options()), residual.reshape({-1, N}).narrow(0, 0, 0), norm_weight,
                     norm_bias, norm_eps);
  const NormEpilogue norm(residual, norm_weight, norm_bias, norm_eps, N);
  return run_int8(prep, &norm);
}

at::Tensor bsr_int8_linear_cpu(const at::Tensor& x, const at::Tensor& values, const at::Tensor& weight_scale,
                               const at::Tensor& weight_sum, const at::Tensor& crow_indices,
                               const at::Tensor& col_indices, const std::optional<at::Tensor>& bias,
                               at::IntArrayRef shape, at::IntArrayRef block_size, c10::string_view act_quant,
                               c10::string_view activation) {
  TORCH_CHECK_VALUE(block_size.size() == 2 && block_size[0] > 0 && block_size[1] > 0,
                    "block_size must be a pair of positive ints, got ", block_size);
  TORCH_CHECK_VALUE(shape.size() == 2 && shape[0] >= 0 && shape[1] >= 0,
                    "shape must be (out_features, in_features) >= 0, got ", shape);
  return int8_core(x, values, weight_scale, weight_sum, crow_indices.contiguous(), col_indices.contiguous(),
                   bias, shape[0], shape[1], block_size[0], block_size[1], act_quant, activation);
}

at::Tensor int8_linear_cpu(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& weight_scale,
                           const at::Tensor& weight_sum, const std::optional<at::Tensor>& bias,
                           at::IntArrayRef shape, c10::string_view act_quant, c10::string_view activation) {
  TORCH_CHECK_VALUE(shape.size() == 2 && shape[0] >= 0 && shape[1] >= 0,
                    "shape must be (out_features, in_features) >= 0, got ", shape);
  const int64_t N = shape[0], K = shape[1];
  const int64_t nb = ceil_div(N, kDenseBlockRows), bc = K > 0 ? K : 1;
  TORCH_CHECK_VALUE(weight.dim() == 4 && weight.size(0) == nb, "int8_linear weight must have shape [", nb,
                    ", ", ceil_div(bc, 4), ", ", kDenseBlockRows, ", 4], got ", weight.sizes());
  if (K == 0) {
    // No inputs (nn.Linear with in_features=0): every output is its bias. The packing keeps one
    // zero column, which must not be read against an x without columns: no block is stored.
    const at::Tensor crow = at::zeros({nb + 1}, x.options().dtype(at::kInt));
    const at::Tensor col = at::zeros({0}, x.options().dtype(at::kInt));
    return int8_core(x, weight.narrow(0, 0, 0), weight_scale, weight_sum, crow, col, bias, N, K, kDenseBlockRows,
                     bc, act_quant, activation);
  }
  // Every block stored: block row i holds block column 0 (all of K).
  const at::Tensor crow = at::arange(nb + 1, x.options().dtype(at::kInt));
  const at::Tensor col = at::zeros({nb}, x.options().dtype(at::kInt));
  return int8_core(x, weight, weight_scale, weight_sum, crow, col, bias, N, K, kDenseBlockRows, bc, act_quant,
                   activation);
}

cpu::BsrLinearFn select_weight_only(bool f32) {
  switch (active_isa()) {
    case Isa::kAmx:
    case Isa::kAvx512Bf16:
      return f32 ? cpu::int8_weight_only_f32_avx512 : cpu::int8_weight_only_bf16_avx512;
    case Isa::kAvx512:
    case Isa::kAvx2:
      return f32 ? cpu::int8_weight_only_f32_avx2 : cpu::int8_weight_only_bf16_avx2;
    case Isa::kScalar:
      break;
  }
  return f32 ? cpu::int8_weight_only_f32_scalar : cpu::int8_weight_only_bf16_scalar;
}

at::Tensor int8_weight_only_linear_cpu(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& weight_scale,
                                       const std::optional<at::Tensor>& bias, at::IntArrayRef shape) {
  TORCH_CHECK_VALUE(shape.size() == 2 && shape[0] >= 0 && shape[1] >= 0,
                    "shape must be (out_features, in_features) >= 0, got ", shape);
  const int64_t N = shape[0], K = shape[1];
  const int64_t nb = ceil_div(N, kDenseBlockRows), bc = K > 0 ? K : 1;
  TORCH_CHECK_VALUE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16,
                    "int8_weight_only_linear on CPU takes float32 or bfloat16 activations, got ", x.scalar_type());
  TORCH_CHECK_VALUE(weight.scalar_type() == at::kChar, "int8 weights must be torch.int8, got ", weight.scalar_type());
  TORCH_CHECK_VALUE(weight.dim() == 4 && weight.size(0) == nb && weight.size(1) == bc &&
                        weight.size(2) == kDenseBlockRows && weight.size(3) == 1,
                    "int8_weight_only_linear weight must have shape [", nb, ", ", bc, ", ", kDenseBlockRows,
                    ", 1], got ", weight.sizes());
  const at::Tensor crow = at::arange(nb + 1, x.options().dtype(at::kInt));
  const at::Tensor col = at::zeros({nb}, x.options().dtype(at::kInt));
  LinearCall call = prepare_linear("int8_weight_only_linear", x, weight, crow, col, bias, N, K, kDenseBlockRows, bc);
  check_weight_scale(weight_scale, N);
  if (call.empty()) return call.result();
  const at::Tensor cs = weight_scale.contiguous();
  call.args.col_scale = cs.data_ptr<float>();
  run_bsr_tasks(call.args, nb, select_weight_only(x.scalar_type() == at::kFloat));
  return call.result();
}

}  // namespace
}  // namespace sparsebert

TORCH_LIBRARY_IMPL(sparsebert, CPU, m) {
  m.impl("bsr_int8_linear", &sparsebert::bsr_int8_linear_cpu);
  m.impl("int8_linear", &sparsebert::int8_linear_cpu);
  m.impl("int8_weight_only_linear", &sparsebert::int8_weight_only_linear_cpu);
  m.impl("bsr_int8_ffn", &sparsebert::bsr_int8_ffn_cpu);
  m.impl("bsr_int8_linear_add_layer_norm", &sparsebert::bsr_int8_linear_add_layer_norm_cpu);
}
