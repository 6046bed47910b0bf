// Helpers shared by the CPU dispatchers of the block-sparse ops (bsr_linear, bsr_int8_linear,
// int8_linear): index validation and the split of the work across threads.
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <vector>

#include "bsr_linear_kernel.h"

namespace sparsebert {

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Raises ValueError, naming the bad value, unless crow/col form a valid BSR pattern of nb block
// rows, ncb block columns and nnzb stored blocks. A pattern is walked once: the same pair of
// tensors, unchanged since (same version counters, so no in-place write through any view), is
// not walked again. Writes that bypass the version counter (through `.data`, numpy, a raw
// pointer) are not seen: change indices in place with tensor ops, or pass new tensors.
void check_indices(const at::Tensor& crow, const at::Tensor& col, int64_t nb, int64_t ncb, int64_t nnzb);

// Runs fn over the whole output: block rows split into groups of equal work (stored blocks),
// one per thread; when there are fewer block rows than threads, rows of x are split too.
// at::parallel_for: OpenMP threads that follow torch.set_num_threads.
void run_bsr_tasks(const cpu::BsrLinearArgs& args, int64_t nb, cpu::BsrLinearFn fn);

// prologue(m0, m1) over rows [0, M) of x split between the threads, then, once every thread is
// done with it, fn as run_bsr_tasks runs it: one parallel region instead of two (every region
// is a wake-up of the other threads, and where the VM deschedules spinning threads a wake-up
// costs tens of microseconds). The INT8 ops quantize x in the prologue. prologue must not throw.
void run_bsr_tasks_after(const cpu::BsrLinearArgs& args, int64_t nb, cpu::BsrLinearFn fn,
                         const std::function<void(int64_t, int64_t)>& prologue);

// What every linear op's CPU implementation shares: x flattened to [M, K] with unit column
// stride (a view when it can be), the output y [M, N] in x's dtype, the bias as fp32, and kernel
// arguments pointing at all of them and at the (contiguous) weight pattern.
struct LinearCall {
  at::Tensor x2, y, bias_f32, values, crow, col;
  std::vector<int64_t> out_sizes;
  cpu::BsrLinearArgs args;
  bool empty() const { return args.M == 0 || args.N == 0; }
  at::Tensor result() const { return y.view(out_sizes); }
};

// Checks (ValueError naming the bad value) that x has K features and every tensor is on the
// CPU, and that the bias is [N] in x's dtype; `op` names the op in the messages.
LinearCall prepare_linear(const char* op, const at::Tensor& x, const at::Tensor& values, const at::Tensor& crow,
                          const at::Tensor& col, const std::optional<at::Tensor>& bias, int64_t N, int64_t K,
                          int64_t br, int64_t bc);

}  // namespace sparsebert
