// Kernel interface of sparsebert::add_layer_norm on the CPU: out = LayerNorm(x + residual) over
// the last dim, one row at a time. No torch header here or in the ISA files that include this
// (layer_norm_<isa>.cpp), as for attention_kernel.h.
#pragma once

#include <cstdint>

namespace sparsebert {
namespace cpu {

struct AddLayerNormArgs {
  const void* x;
  const void* residual;
  void* out;
  bool bf16;         // element type of x, residual and out: bf16 bits (true) or float
  const float* weight;  // [n], fp32
  const float* bias;    // [n], fp32
  float eps;
  int64_t n;  // the normalized (last) dim; rows are contiguous, n elements apart
};

// Rows [begin, end).
using AddLayerNormFn = void (*)(const AddLayerNormArgs& args, int64_t begin, int64_t end);

void add_layer_norm_scalar(const AddLayerNormArgs& args, int64_t begin, int64_t end);
void add_layer_norm_avx2(const AddLayerNormArgs& args, int64_t begin, int64_t end);
void add_layer_norm_avx512(const AddLayerNormArgs& args, int64_t begin, int64_t end);

}  // namespace cpu
}  // namespace sparsebert
