// Helpers shared by the CPU dispatchers of the block-sparse ops (bsr_linear, bsr_int8_linear,
// int8_linear): index validation and the split of the work across threads.
#pragma once

#include <ATen/ATen.h>

#include <vector>

#include "bsr_linear_kernel.h"

namespace sparsebert {

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Raises ValueError, naming the bad value, unless crow/col form a valid BSR pattern of nb block
// rows, ncb block columns and nnzb stored blocks.
void check_indices(const at::Tensor& crow, const at::Tensor& col, int64_t nb, int64_t ncb, int64_t nnzb);

// Runs fn over the whole output: block rows split into groups of equal work (stored blocks),
// one per thread; when there are fewer block rows than threads, rows of x are split too.
// at::parallel_for: OpenMP threads that follow torch.set_num_threads.
void run_bsr_tasks(const cpu::BsrLinearArgs& args, int64_t nb, cpu::BsrLinearFn fn);

}  // namespace sparsebert
