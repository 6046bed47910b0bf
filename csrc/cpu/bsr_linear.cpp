// CPU implementation of sparsebert::bsr_linear: validation, then the ISA variant chosen at run
// time, run over (block-row group, row group) tasks with at::parallel_for (OpenMP, following
// torch.set_num_threads).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "bsr_common.h"
#include "bsr_linear_kernel.h"
#include "isa.h"

namespace sparsebert {
namespace {

// The shapes the AMX kernel takes: whole 16-output B tiles (br % 16), A tiles of at most 32
// bf16 inputs that never read past a row of x (bc even, bc <= 32 or bc % 32 == 0, K a multiple
// of the k step), and at least one whole 16-row tile.
bool amx_eligible(const cpu::BsrLinearArgs& a) {
  const int64_t kstep = a.bc < 32 ? a.bc : 32;
  return a.br % 16 == 0 && a.bc % 2 == 0 && a.bc % kstep == 0 && a.K % kstep == 0 && a.M >= 16;
}

cpu::BsrLinearFn select_kernel(at::ScalarType dtype, const cpu::BsrLinearArgs& args) {
  const Isa isa = active_isa();
  const bool f32 = dtype == at::kFloat;
  switch (isa) {
    case Isa::kAmx:
      if (f32) return cpu::bsr_linear_f32_avx512;
      return amx_eligible(args) ? cpu::bsr_linear_bf16_amx : cpu::bsr_linear_bf16_avx512bf16;
    case Isa::kAvx512Bf16: return f32 ? cpu::bsr_linear_f32_avx512 : cpu::bsr_linear_bf16_avx512bf16;
    case Isa::kAvx512: return f32 ? cpu::bsr_linear_f32_avx512 : cpu::bsr_linear_bf16_avx512;
    case Isa::kAvx2: return f32 ? cpu::bsr_linear_f32_avx2 : cpu::bsr_linear_bf16_avx2;
    case Isa::kScalar: return f32 ? cpu::bsr_linear_f32_scalar : cpu::bsr_linear_bf16_scalar;
  }
  TORCH_CHECK(false, "unknown ISA level");
}

at::Tensor bsr_linear_cpu(const at::Tensor& x, const at::Tensor& values, const at::Tensor& crow_indices,
                          const at::Tensor& col_indices, const std::optional<at::Tensor>& bias,
                          at::IntArrayRef shape, at::IntArrayRef block_size) {
  TORCH_CHECK_VALUE(block_size.size() == 2 && block_size[0] > 0 && block_size[1] > 0,
                    "block_size must be a pair of positive ints, got ", block_size);
  TORCH_CHECK_VALUE(shape.size() == 2 && shape[0] >= 0 && shape[1] >= 0,
                    "shape must be (out_features, in_features) >= 0, got ", shape);
  const int64_t N = shape[0], K = shape[1];
  const int64_t br = block_size[0], bc = block_size[1];
  TORCH_CHECK_VALUE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16,
                    "bsr_linear on CPU supports float32 and bfloat16 inputs, got ", x.scalar_type());
  TORCH_CHECK_VALUE(values.scalar_type() == x.scalar_type(), "dtype mismatch: x is ",
                    x.scalar_type(), " but the weight values are ", values.scalar_type());
  for (const at::Tensor* t : {&x, &values, &crow_indices, &col_indices})
    TORCH_CHECK_VALUE(t->device().is_cpu(), "bsr_linear CPU kernel got a tensor on ", t->device());
  TORCH_CHECK_VALUE(x.dim() >= 1 && x.size(-1) == K, "x must have in_features=", K,
                    " in its last dimension, got shape ", x.sizes());

  const int64_t kp = x.scalar_type() == at::kFloat ? 1 : 2;
  const int64_t nb = ceil_div(N, br), ncb = ceil_div(K, bc);
  TORCH_CHECK_VALUE(values.dim() == 4 && values.size(1) == ceil_div(bc, kp) && values.size(2) == br &&
                        values.size(3) == kp,
                    "values must have shape [nnzb, ", ceil_div(bc, kp), ", ", br, ", ", kp,
                    "] for block_size (", br, ", ", bc, ") and dtype ", x.scalar_type(), ", got ",
                    values.sizes());
  const int64_t nnzb = values.size(0);
  const at::Tensor crow = crow_indices.contiguous();
  const at::Tensor col = col_indices.contiguous();
  check_indices(crow, col, nb, ncb, nnzb);

  at::Tensor bias_f32;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == N, "bias must have shape [", N,
                      "], got ", bias->sizes());
    TORCH_CHECK_VALUE(bias->scalar_type() == x.scalar_type(), "dtype mismatch: x is ",
                      x.scalar_type(), " but bias is ", bias->scalar_type());
    TORCH_CHECK_VALUE(bias->device().is_cpu(), "bsr_linear CPU kernel got bias on ", bias->device());
    bias_f32 = bias->to(at::kFloat).contiguous();
  }

  std::vector<int64_t> out_sizes(x.sizes().begin(), x.sizes().end());
  out_sizes.back() = N;
  at::Tensor x2 = x.reshape({-1, K});
  const int64_t M = x2.size(0);
  at::Tensor y = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return y.view(out_sizes);
  if (K > 1 && x2.stride(1) != 1) x2 = x2.contiguous();
  const at::Tensor vals = values.contiguous();

  cpu::BsrLinearArgs args;
  args.x = x2.data_ptr();
  args.lda = x2.stride(0);
  args.M = M;
  args.N = N;
  args.K = K;
  args.values = vals.data_ptr();
  args.crow = crow.data_ptr<int32_t>();
  args.col = col.data_ptr<int32_t>();
  args.br = static_cast<int>(br);
  args.bc = static_cast<int>(bc);
  args.bias = bias_f32.defined() ? bias_f32.data_ptr<float>() : nullptr;
  args.y = y.data_ptr();
  args.ldy = N;
  const cpu::BsrLinearFn fn = select_kernel(x.scalar_type(), args);

  run_bsr_tasks(args, nb, fn);
  return y.view(out_sizes);
}

}  // namespace
}  // namespace sparsebert

TORCH_LIBRARY_IMPL(sparsebert, CPU, m) { m.impl("bsr_linear", &sparsebert::bsr_linear_cpu); }
