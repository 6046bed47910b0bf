// CPU implementation of sparsebert::bsr_linear: validation, then the ISA variant chosen at run
// time, run over (block-row group, row group) tasks with at::parallel_for (OpenMP, following
// torch.set_num_threads).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
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

// Dense semantics for non-finite inputs. nn.Linear multiplies every x[m, k] by W[n, k], so a NaN
// or Inf in row m of x reaches the outputs of row m through the zero weights too (0 * NaN and
// 0 * Inf are NaN), while the kernel never reads the blocks it does not store. Outputs of a block
// row whose unstored block columns hold a non-finite x[m, k] become NaN, as in the dense layer;
// inside stored blocks the kernel's own IEEE arithmetic already agrees with it. The normal case
// costs one reduction over x and no [M, K] temporary: a NaN or Inf anywhere makes the float32 sum
// non-finite; a sum that overflows on finite values only takes the exact path below, which
// changes nothing then.
void propagate_nonfinite(const LinearCall& call, int64_t N, int64_t K, int64_t br, int64_t bc) {
  if (std::isfinite(at::sum(call.x2, at::kFloat).item<float>())) return;
  const at::Tensor bad = at::logical_not(at::isfinite(call.x2));  // [M, K]
  const int64_t M = bad.size(0), nb = ceil_div(N, br), ncb = ceil_div(K, bc);
  const at::Tensor bad_blocks =
      at::constant_pad_nd(bad.to(at::kFloat), {0, ncb * bc - K}, 0).view({M, ncb, bc}).amax(2);  // [M, ncb]
  at::Tensor unstored = at::ones({nb, ncb}, at::kFloat);  // [nb, ncb]: 1 where a block is not stored
  auto u = unstored.accessor<float, 2>();
  const int32_t* crow = call.crow.data_ptr<int32_t>();
  const int32_t* col = call.col.data_ptr<int32_t>();
  for (int64_t i = 0; i < nb; ++i)
    for (int32_t b = crow[i]; b < crow[i + 1]; ++b) u[i][col[b]] = 0.f;
  const at::Tensor poisoned = at::matmul(bad_blocks, unstored.t()).gt(0);  // [M, nb]
  const at::Tensor rows = poisoned.repeat_interleave(br, 1).narrow(1, 0, N);  // [M, N]
  call.y.masked_fill_(rows, std::numeric_limits<float>::quiet_NaN());
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
  LinearCall call = prepare_linear("bsr_linear", x, values, crow_indices, col_indices, bias, N, K, br, bc);
  const int64_t kp = x.scalar_type() == at::kFloat ? 1 : 2;
  const int64_t nb = ceil_div(N, br), ncb = ceil_div(K, bc);
  TORCH_CHECK_VALUE(values.dim() == 4 && values.size(1) == ceil_div(bc, kp) && values.size(2) == br &&
                        values.size(3) == kp,
                    "values must have shape [nnzb, ", ceil_div(bc, kp), ", ", br, ", ", kp,
                    "] for block_size (", br, ", ", bc, ") and dtype ", x.scalar_type(), ", got ",
                    values.sizes());
  check_indices(call.crow, call.col, nb, ncb, values.size(0));
  if (call.empty()) return call.result();
  const cpu::BsrLinearFn fn = select_kernel(x.scalar_type(), call.args);
  run_bsr_tasks(call.args, nb, fn);
  propagate_nonfinite(call, N, K, br, bc);
  return call.result();
}

}  // namespace
}  // namespace sparsebert

TORCH_LIBRARY_IMPL(sparsebert, CPU, m) { m.impl("bsr_linear", &sparsebert::bsr_linear_cpu); }
