// CPU implementation of sparsebert::bsr_linear: validation, then the ISA variant chosen at run
// time, run over (block-row group, row group) tasks with at::parallel_for (OpenMP, following
// torch.set_num_threads).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "bsr_linear_kernel.h"
#include "isa.h"

namespace sparsebert {
namespace {

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

void check_indices(const at::Tensor& crow, const at::Tensor& col, int64_t nb, int64_t ncb,
                   int64_t nnzb) {
  TORCH_CHECK_VALUE(crow.scalar_type() == at::kInt && col.scalar_type() == at::kInt,
                    "crow_indices and col_indices must be int32, got ", crow.scalar_type(),
                    " and ", col.scalar_type());
  TORCH_CHECK_VALUE(crow.dim() == 1 && crow.size(0) == nb + 1, "crow_indices must have shape [",
                    nb + 1, "] (block rows + 1), got ", crow.sizes());
  TORCH_CHECK_VALUE(col.dim() == 1 && col.size(0) == nnzb, "col_indices must have shape [", nnzb,
                    "] (one per stored block), got ", col.sizes());
  const int32_t* cr = crow.data_ptr<int32_t>();
  const int32_t* cl = col.data_ptr<int32_t>();
  TORCH_CHECK_VALUE(cr[0] == 0, "crow_indices[0] must be 0, got ", cr[0]);
  TORCH_CHECK_VALUE(cr[nb] == nnzb, "crow_indices[-1] must equal the number of stored blocks ",
                    nnzb, ", got ", cr[nb]);
  for (int64_t i = 0; i < nb; ++i) {
    TORCH_CHECK_VALUE(cr[i] <= cr[i + 1], "crow_indices must be non-decreasing, but crow_indices[",
                      i, "]=", cr[i], " > crow_indices[", i + 1, "]=", cr[i + 1]);
    for (int64_t j = cr[i]; j < cr[i + 1]; ++j) {
      TORCH_CHECK_VALUE(cl[j] >= 0 && cl[j] < ncb, "col_indices[", j, "]=", cl[j],
                        " is out of range for ", ncb, " block columns");
      TORCH_CHECK_VALUE(j == cr[i] || cl[j - 1] < cl[j], "col_indices must be strictly increasing "
                        "within a block row, but block row ", i, " has ", cl[j - 1], " then ", cl[j]);
    }
  }
}

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

// Splits block rows [0, nb) into `groups` contiguous ranges of about equal work. Work of a block
// row = its stored blocks * bc (multiply-add steps per row of x) + a fixed 8 for its output
// stores, so a run of empty block rows is not free, and a dense row is not split evenly by count.
std::vector<int64_t> balance_block_rows(const int32_t* crow, int64_t nb, int64_t bc, int64_t groups) {
  auto cost = [&](int64_t rb) { return int64_t(crow[rb]) * bc + 8 * rb; };
  const int64_t total = cost(nb);
  std::vector<int64_t> bounds(groups + 1, nb);
  bounds[0] = 0;
  int64_t rb = 0;
  for (int64_t g = 1; g < groups; ++g) {
    const int64_t target = total * g / groups;
    while (rb < nb && cost(rb) < target) ++rb;
    bounds[g] = rb;
  }
  return bounds;
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

  // Tasks: block rows split into groups of equal work, one per thread; when there are fewer
  // block rows than threads, rows of x are split too (at least 16 rows a task).
  const int64_t threads = at::get_num_threads();
  const int64_t row_groups = std::min(nb, threads);
  const int64_t m_groups = std::max<int64_t>(1, std::min(threads / row_groups, ceil_div(M, 16)));
  const std::vector<int64_t> bounds = balance_block_rows(args.crow, nb, bc, row_groups);
  at::parallel_for(0, row_groups * m_groups, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t g = task / m_groups, mg = task % m_groups;
      fn(args, bounds[g], bounds[g + 1], M * mg / m_groups, M * (mg + 1) / m_groups);
    }
  });
  return y.view(out_sizes);
}

}  // namespace
}  // namespace sparsebert

TORCH_LIBRARY_IMPL(sparsebert, CPU, m) { m.impl("bsr_linear", &sparsebert::bsr_linear_cpu); }
