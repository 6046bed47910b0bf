// Kernel interface of sparsebert::attention and sparsebert::attention_varlen on the CPU.
//
// No torch header here or in the ISA files that include this (attention_<isa>.cpp): an inline
// torch function instantiated there would carry that file's instruction set into code shared
// with every other level. The dispatcher (attention.cpp) validates, builds AttentionArgs and runs
// the (batch, head) tasks on torch's thread pool.
#pragma once

#include <cstdint>

namespace sparsebert {
namespace cpu {

// One attention call: out = softmax(scale * q @ k^T + mask) @ v per (sequence, head), computed
// tile by tile with an online softmax (no Sq x Sk matrix is ever stored).
struct AttentionArgs {
  const void* q;
  const void* k;
  const void* v;
  void* out;
  bool bf16;  // element type of q, k, v and out: bf16 bits (true) or float
  // precision="bf16": q, k and v are rounded to bf16 before the matmuls (which accumulate in fp32);
  // the bf16 dot-product kernels also round P. Otherwise fp32 inputs are used as they are.
  bool round_bf16;
  // precision="int8": q, k, v quantized to int8 in the op and both matmuls in int32 (see
  // attention_int8_avx512vnni.cpp); the softmax of a query block then spans every key at once.
  bool int8;

  int64_t B;   // sequences
  int64_t H;   // heads
  int64_t Sq;  // query rows per sequence (padded layout); varlen: unused
  int64_t Sk;  // key rows per sequence (padded layout); varlen: unused
  int64_t D;   // head dim, 1..256

  // Element strides; the head dim of every tensor has stride 1. Padded layout: element
  // (b, h, s, d) of q is q[b * q_sb + h * q_sh + s * q_ss + d]. Varlen (cu_seqlens set): row s of
  // sequence b is token cu_seqlens[b] + s, at (cu_seqlens[b] + s) * q_ss + h * q_sh + d; *_sb unused.
  int64_t q_sb, q_sh, q_ss;
  int64_t k_sb, k_sh, k_ss;
  int64_t v_sb, v_sh, v_ss;
  int64_t o_sb, o_sh, o_ss;
  const int32_t* cu_seqlens;  // varlen: B + 1 non-decreasing token offsets, else null

  float scale;

  // At most one of the two masks is set.
  // Key padding: key_bias[b * Sk + j] is 0 (keep) or -inf (padding). Key blocks that are all
  // padding are skipped; a query row with no kept key gets zeros.
  const float* key_bias;
  // Additive fp32 mask: mask[b * m_sb + h * m_sh + i * m_sq + j * m_sk] is added to the scaled
  // score (i, j); strides are 0 along broadcast dims.
  const float* mask;
  int64_t m_sb, m_sh, m_sq, m_sk;
};

// Runs tasks[0..n): task t is (sequence t / H, head t % H), all of its query rows.
using AttentionFn = void (*)(const AttentionArgs& args, const int64_t* tasks, int64_t n);

// fp32 and bf16 (widened to fp32), one build per ISA level; "scalar" is baseline x86-64 (SSE2).
void attention_scalar(const AttentionArgs& args, const int64_t* tasks, int64_t n);
void attention_avx2(const AttentionArgs& args, const int64_t* tasks, int64_t n);
void attention_avx512(const AttentionArgs& args, const int64_t* tasks, int64_t n);
// fp32 and bf16 inputs, both matmuls as bf16 dot products (vdpbf16ps): precision="bf16".
void attention_dpbf16_avx512bf16(const AttentionArgs& args, const int64_t* tasks, int64_t n);
// precision="int8": INT8 matmuls with vpdpbusd (the avx512bf16 and amx levels, all of which have
// AVX512_VNNI), and the same numbers in plain C++ below them.
void attention_int8_avx512vnni(const AttentionArgs& args, const int64_t* tasks, int64_t n);
void attention_int8_scalar(const AttentionArgs& args, const int64_t* tasks, int64_t n);
// bf16 inputs, and fp32 ones at precision="bf16" (rounded as they are packed): both matmuls on AMX
// tiles (bf16 x bf16 -> fp32), the softmax in AVX-512 fp32.
void attention_bf16_amx(const AttentionArgs& args, const int64_t* tasks, int64_t n);

}  // namespace cpu
}  // namespace sparsebert
