// sparsebert::add_layer_norm's CPU implementation, for the ops that end in one (bsr_int8_ffn).
#pragma once

#include <ATen/ATen.h>

#include "layer_norm_kernel.h"

namespace sparsebert {

// The row kernel of the active ISA level.
cpu::AddLayerNormFn select_add_layer_norm();

// LayerNorm(x + residual) over the last dim: validates its arguments and runs the row kernel.
at::Tensor add_layer_norm_cpu(const at::Tensor& x, const at::Tensor& residual, const at::Tensor& weight,
                              const at::Tensor& bias, double eps);

}  // namespace sparsebert
