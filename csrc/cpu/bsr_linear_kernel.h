// Interface between the bsr_linear dispatcher (bsr_linear.cpp, which sees torch) and its ISA
// variants (bsr_linear_<isa>.cpp, compiled with their own -m flags, which must not include any
// torch header: an inline torch function instantiated there would carry AVX-512 code into the
// shared object, and the linker may pick that copy for every caller).
#pragma once

#include <cstdint>

namespace sparsebert {
namespace cpu {

// y[m, n] = sum_k x[m, k] * W[n, k] + bias[n] for one BSR weight W of shape [N, K].
//
// Weight layout (the "k-pair" packing, written by sparsebert.ops.pack_bsr):
//   values  [nnzb, KB, br, kp]  element (b, kk, r, j) is W[row0 + r, col0 + kk * kp + j] of the
//                                b-th stored block (row0 = block_row * br, col0 = col * bc);
//                                kp = 1 for fp32, kp = 2 for bf16, KB = ceil(bc / kp), and the
//                                entries past bc (odd bc in bf16) are zero.
//   crow    [NB + 1]  int32, NB = ceil(N / br): blocks of block row i are crow[i] .. crow[i+1]-1
//   col     [nnzb]    int32 block-column index, strictly increasing within a block row
// For a fixed k the br outputs of a block are contiguous, so one vector load feeds br output
// lanes and x[m, k] is broadcast: the kernel vectorises over the output features of a block
// row. bf16 keeps two consecutive k of one output in one 32-bit lane, the operand layout of
// vdpbf16ps, so one instruction does two multiply-adds per lane.
struct BsrLinearArgs {
  const void* x;        // [M, K] fp32 or bf16 (uint16 bits), unit column stride
  int64_t lda;          // row stride of x, in elements
  int64_t M, N, K;
  const void* values;   // packed as above, same dtype as x
  const int32_t* crow;
  const int32_t* col;
  int br, bc;           // block rows (output features), block cols (input features)
  const float* bias;    // [N] fp32, or nullptr
  void* y;              // [M, N] same dtype as x
  int64_t ldy;          // row stride of y, in elements
};

// Each variant computes the outputs of block rows [rb0, rb1) for input rows [m0, m1).
// Different (block row, row) ranges write disjoint outputs, so callers may run them in parallel.
using BsrLinearFn = void (*)(const BsrLinearArgs&, int64_t rb0, int64_t rb1, int64_t m0,
                             int64_t m1);

void bsr_linear_f32_scalar(const BsrLinearArgs&, int64_t, int64_t, int64_t, int64_t);
void bsr_linear_bf16_scalar(const BsrLinearArgs&, int64_t, int64_t, int64_t, int64_t);
void bsr_linear_f32_avx2(const BsrLinearArgs&, int64_t, int64_t, int64_t, int64_t);
void bsr_linear_bf16_avx2(const BsrLinearArgs&, int64_t, int64_t, int64_t, int64_t);
void bsr_linear_f32_avx512(const BsrLinearArgs&, int64_t, int64_t, int64_t, int64_t);
// bf16 through fp32 conversion (AVX-512 without AVX512_BF16)
void bsr_linear_bf16_avx512(const BsrLinearArgs&, int64_t, int64_t, int64_t, int64_t);
// bf16 with vdpbf16ps (AVX512_BF16)
void bsr_linear_bf16_avx512bf16(const BsrLinearArgs&, int64_t, int64_t, int64_t, int64_t);
// bf16 with AMX tiles, for the shapes amx_eligible() accepts (bsr_linear.cpp); rows past the
// last whole 16-row tile go to bsr_linear_bf16_avx512bf16.
void bsr_linear_bf16_amx(const BsrLinearArgs&, int64_t, int64_t, int64_t, int64_t);

}  // namespace cpu
}  // namespace sparsebert
