// Interface between the bsr_linear dispatcher (bsr_linear.cpp, which sees torch) and its ISA
// variants (bsr_linear_<isa>.cpp, compiled with their own -m flags, which must not include any
// torch header: an inline torch function instantiated there would carry AVX-512 code into the
// shared object, and the linker may pick that copy for every caller).
#pragma once

#include <cstdint>

namespace sparsebert {
namespace cpu {

// Activation applied in the epilogue of the INT8 kernels (BsrLinearArgs::activation), after the bias.
enum Activation : int {
  kActNone = 0,
  kActGelu = 1,  // 0.5 y (1 + erf(y / sqrt 2)), the exact (erf) GELU of torch and BERT
};

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
  // INT8 only (nullptr otherwise): x is then the quantized activation buffer (uint8 with the
  // row's zero point: q + 128 when symmetric, padded with the zero point past K to whole
  // k-quads) and y = (acc - row_zero[m] * col_sum[n]) * row_scale[m] * col_scale[n] + bias[n],
  // with acc the exact int32 sum of x_u8 * w_s8.
  const float* row_scale = nullptr;  // [M] activation scale per token
  const int32_t* row_zero = nullptr; // [M] activation zero point per token (128 if symmetric)
  // Every row_zero is 128 (the symmetric modes, rows that cannot be quantized included): a kernel
  // may then take the correction as 128 * col_sum[n], the same integers without a multiply.
  bool symmetric = false;
  const float* col_scale = nullptr;  // [N] weight scale per output channel
  const int32_t* col_sum = nullptr;  // [N] sum over k of the int8 weights of output n
  // Write whole vectors of y with non-temporal stores (AVX-512 variants; the others ignore it):
  // set by the dispatcher when y is larger than the caches hold, so that its lines are not read
  // for ownership first and do not evict x and the weights. Only whole, aligned vectors stream
  // (the others are stored as usual), so y 64-byte aligned with ldy a multiple of 16 streams all.
  bool stream_y = false;
  // INT8 and weight-only kernels (quantized traits and the one-output-block kernel): y =
  // act(... + bias[n]), see Activation. Others require kActNone.
  int activation = kActNone;
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

// INT8 (bsr_int8_linear, int8_linear): weights int8 in the k-quad packing (kp = 4: four
// consecutive inputs of one output in a 32-bit lane, the operand layout of vpdpbusd and of AMX
// int8 B tiles); x the quantized activation buffer described in BsrLinearArgs; y fp32 or bf16.
void bsr_int8_linear_f32_scalar(const BsrLinearArgs&, int64_t, int64_t, int64_t, int64_t);
void bsr_int8_linear_bf16_scalar(const BsrLinearArgs&, int64_t, int64_t, int64_t, int64_t);
void bsr_int8_linear_f32_avx2(const BsrLinearArgs&, int64_t, int64_t, int64_t, int64_t);
void bsr_int8_linear_bf16_avx2(const BsrLinearArgs&, int64_t, int64_t, int64_t, int64_t);
// 256-bit vpdpbusd (bsr_int8_linear_vnni256.h): AVX-VNNI (VEX), and the EVEX build for CPUs with
// AVX512_VNNI + VL that lack AVX-VNNI.
void bsr_int8_linear_f32_avxvnni(const BsrLinearArgs&, int64_t, int64_t, int64_t, int64_t);
void bsr_int8_linear_bf16_avxvnni(const BsrLinearArgs&, int64_t, int64_t, int64_t, int64_t);
void bsr_int8_linear_f32_vnni256_evex(const BsrLinearArgs&, int64_t, int64_t, int64_t, int64_t);
void bsr_int8_linear_bf16_vnni256_evex(const BsrLinearArgs&, int64_t, int64_t, int64_t, int64_t);
void bsr_int8_linear_f32_avx512vnni(const BsrLinearArgs&, int64_t, int64_t, int64_t, int64_t);
void bsr_int8_linear_bf16_avx512vnni(const BsrLinearArgs&, int64_t, int64_t, int64_t, int64_t);
// AMX int8 for the shapes amx_int8_eligible() accepts; rows past the last whole 16-row tile go
// to the VNNI kernel.
void bsr_int8_linear_f32_amx(const BsrLinearArgs&, int64_t, int64_t, int64_t, int64_t);
void bsr_int8_linear_bf16_amx(const BsrLinearArgs&, int64_t, int64_t, int64_t, int64_t);

// INT8 with blocks of one output (br == 1, bc a multiple of 4), vectorized over rows of x: `x`
// is then the quantized activation buffer transposed to k-quad-major order (uint32 quads,
// element [quad][row], row stride lda = the rows rounded up to 16), as written by
// transpose_quads_avx512; the block-row range [rb0, rb1) is a range of outputs.
void bsr_int8_linear_rows_f32_avx512vnni(const BsrLinearArgs&, int64_t, int64_t, int64_t, int64_t);
void bsr_int8_linear_rows_bf16_avx512vnni(const BsrLinearArgs&, int64_t, int64_t, int64_t, int64_t);
// xt[c][m] = the 4 bytes of row m of q at quad c, for quads [q0, q1) of `quads` and rows
// [0, ldx): rows past M are zeros. q: [M, ldq] bytes.
void transpose_quads_avx512(const uint8_t* q, int64_t ldq, int64_t M, int64_t quads, uint32_t* xt, int64_t ldx,
                            int64_t q0, int64_t q1);

// Weight-only INT8 (int8_weight_only_linear): x fp32 or bf16 as it is, weights int8 in the
// plain packing (kp = 1), widened to fp32 in registers; y = acc * col_scale[n] + bias[n].
// row_scale and col_sum are nullptr.
void int8_weight_only_f32_scalar(const BsrLinearArgs&, int64_t, int64_t, int64_t, int64_t);
void int8_weight_only_bf16_scalar(const BsrLinearArgs&, int64_t, int64_t, int64_t, int64_t);
void int8_weight_only_f32_avx2(const BsrLinearArgs&, int64_t, int64_t, int64_t, int64_t);
void int8_weight_only_bf16_avx2(const BsrLinearArgs&, int64_t, int64_t, int64_t, int64_t);
void int8_weight_only_f32_avx512(const BsrLinearArgs&, int64_t, int64_t, int64_t, int64_t);
void int8_weight_only_bf16_avx512(const BsrLinearArgs&, int64_t, int64_t, int64_t, int64_t);

// Dynamic quantization of rows [m0, m1) of x ([M, K] fp32 or bf16, row stride lda) to uint8
// in `out` (row stride ldq; columns K .. ldq-1 hold the zero point). With range == nullptr each
// row uses its own range (per token), else the range {lo, hi} given (per tensor).
//   symmetric:  amax = max(|lo|, |hi|), scale = amax / 127, zero = 128,
//               q = clamp(round(x * (127 / amax)), -127, 127) + 128
//   asymmetric: lo <= 0 <= hi, scale = (hi - lo) / 255, zero = clamp(round(-lo * inv), 0, 255)
//               with inv = 255 / (hi - lo), q = clamp(round(x * inv) + zero, 0, 255)
// round is half to even; a range of 0 gives scale 0, inv 0 (every q = zero). A row holding Inf
// or NaN gets scale NaN (and the caller raises). The pure-torch reference computes exactly the
// same integers (sparsebert.ops.int8_format.quantize_activations).
using QuantizeRowsFn = void (*)(const void* x, int64_t lda, bool bf16, int64_t m0, int64_t m1,
                                int64_t K, uint8_t* out, int64_t ldq, float* scale, int32_t* zero,
                                bool asymmetric, const float* range);
void quantize_rows_scalar(const void*, int64_t, bool, int64_t, int64_t, int64_t, uint8_t*, int64_t, float*,
                          int32_t*, bool, const float*);
void quantize_rows_avx512(const void*, int64_t, bool, int64_t, int64_t, int64_t, uint8_t*, int64_t, float*,
                          int32_t*, bool, const float*);
void quantize_rows_avx2(const void*, int64_t, bool, int64_t, int64_t, int64_t, uint8_t*, int64_t, float*,
                        int32_t*, bool, const float*);

}  // namespace cpu
}  // namespace sparsebert
