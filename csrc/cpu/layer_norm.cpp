// CPU implementation of sparsebert::add_layer_norm: validation, then rows split over torch's
// threads, each run by the ISA level's kernel (layer_norm_<isa>.cpp).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <utility>

#include "isa.h"
#include "layer_norm.h"
#include "layer_norm_kernel.h"

namespace sparsebert {

cpu::AddLayerNormFn select_add_layer_norm() {
  switch (active_isa()) {
    case Isa::kAmx:
    case Isa::kAvx512Bf16:
    case Isa::kAvx512: return cpu::add_layer_norm_avx512;
    case Isa::kAvx2: return cpu::add_layer_norm_avx2;
    case Isa::kScalar: return cpu::add_layer_norm_scalar;
  }
  TORCH_CHECK(false, "unknown ISA level");
}

at::Tensor add_layer_norm_cpu(const at::Tensor& x, const at::Tensor& residual, const at::Tensor& weight,
                              const at::Tensor& bias, double eps) {
  const char* op = "add_layer_norm";
  TORCH_CHECK_VALUE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16, op,
                    " on CPU supports float32 and bfloat16, got x of dtype ", x.scalar_type());
  TORCH_CHECK_VALUE(x.dim() >= 1 && x.size(-1) >= 1, op, ": x must have a last (normalized) dim of size >= 1, got shape ",
                    x.sizes());
  TORCH_CHECK_VALUE(residual.sizes() == x.sizes(), op, ": residual must have x's shape ", x.sizes(), ", got ",
                    residual.sizes());
  const int64_t n = x.size(-1);
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor&>{"residual", residual}, {"weight", weight},
                                {"bias", bias}}) {
    TORCH_CHECK_VALUE(t.scalar_type() == x.scalar_type(), op, ": ", name, " must have x's dtype ", x.scalar_type(),
                      ", got ", t.scalar_type());
    TORCH_CHECK_VALUE(t.device().is_cpu(), op, ": ", name, " must be a CPU tensor, got ", t.device());
  }
  TORCH_CHECK_VALUE(x.device().is_cpu(), op, ": x must be a CPU tensor, got ", x.device());
  TORCH_CHECK_VALUE(weight.dim() == 1 && weight.size(0) == n && bias.dim() == 1 && bias.size(0) == n, op,
                    ": weight and bias must be [", n, "] (x's last dim), got ", weight.sizes(), " and ", bias.sizes());
  TORCH_CHECK_VALUE(std::isfinite(eps) && eps >= 0, op, ": eps must be finite and >= 0, got ", eps);

  const at::Tensor xc = x.contiguous(), rc = residual.contiguous();
  const at::Tensor w = weight.to(at::kFloat).contiguous(), b = bias.to(at::kFloat).contiguous();
  at::Tensor out = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  const int64_t rows = x.numel() / n;
  if (rows == 0) return out;
  cpu::AddLayerNormArgs a{};
  a.x = xc.data_ptr();
  a.residual = rc.data_ptr();
  a.out = out.data_ptr();
  a.bf16 = x.scalar_type() == at::kBFloat16;
  a.weight = w.data_ptr<float>();
  a.bias = b.data_ptr<float>();
  a.eps = static_cast<float>(eps);
  a.n = n;
  const cpu::AddLayerNormFn fn = select_add_layer_norm();
  // ~32 KiB of each input per task: small batches stay on one thread, large ones split evenly.
  const int64_t grain = std::max<int64_t>(1, 8192 / n);
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) { fn(a, begin, end); });
  return out;
}

}  // namespace sparsebert

TORCH_LIBRARY_IMPL(sparsebert, CPU, m) { m.impl("add_layer_norm", &sparsebert::add_layer_norm_cpu); }
