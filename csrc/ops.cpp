// Every sparsebert op schema, in one place. Implementations register per device in
// csrc/cpu/*.cpp (TORCH_LIBRARY_IMPL) and, for CUDA, from Python (sparsebert.kernels);
// fake (meta) functions live next to each op's Python wrapper in sparsebert/ops/.
//
// This file is also the Python module sparsebert._C: importing it runs the registrations
// below. It has no pybind11 dependency: the few introspection functions use the C API.
#include <Python.h>

#include <torch/library.h>

#include <string>

#include "cpu/isa.h"
#include "cpu/peak.h"

TORCH_LIBRARY(sparsebert, m) {
  // y = x @ W.T + bias for a block-sparse W of shape `shape` = (out_features, in_features),
  // stored as BSR with blocks `block_size` = (block_rows, block_cols); values in the k-pair
  // packing documented in csrc/cpu/bsr_linear_kernel.h (written by sparsebert.ops.pack_bsr).
  m.def(
      "bsr_linear(Tensor x, Tensor values, Tensor crow_indices, Tensor col_indices, "
      "Tensor? bias, int[2] shape, int[2] block_size) -> Tensor");
  // y = dequant(quant(x) @ W_q.T) + bias: x quantized to 8 bits inside the op (act_quant:
  // per_token | per_token_asym | per_tensor | per_tensor_asym), W_q int8 per output channel
  // (weight_scale), weight_sum[n] = sum_k W_q[n, k]; exact int32 accumulation. Block-sparse W_q
  // in the k-quad packing (sparsebert.ops.int8_format). activation: none | gelu (the exact, erf
  // GELU), applied to y in the epilogue, after the bias.
  m.def(
      "bsr_int8_linear(Tensor x, Tensor values, Tensor weight_scale, Tensor weight_sum, "
      "Tensor crow_indices, Tensor col_indices, Tensor? bias, int[2] shape, int[2] block_size, "
      "str act_quant=\"per_token\", str activation=\"none\") -> Tensor");
  // A transformer FFN as one op: bsr_int8_linear(bsr_int8_linear(x, up..., activation=activation),
  // down..., activation="none"), both layers with act_quant; same numbers as the two ops. With
  // norm_weight and norm_bias: add_layer_norm(that, x, norm_weight, norm_bias, norm_eps).
  m.def(
      "bsr_int8_ffn(Tensor x, Tensor up_values, Tensor up_weight_scale, Tensor up_weight_sum, "
      "Tensor up_crow_indices, Tensor up_col_indices, Tensor? up_bias, int[2] up_shape, int[2] up_block_size, "
      "Tensor down_values, Tensor down_weight_scale, Tensor down_weight_sum, Tensor down_crow_indices, "
      "Tensor down_col_indices, Tensor? down_bias, int[2] down_shape, int[2] down_block_size, "
      "str act_quant=\"per_token\", str activation=\"gelu\", Tensor? norm_weight=None, Tensor? norm_bias=None, "
      "float norm_eps=1e-12) -> Tensor");
  // A projection and the residual add + LayerNorm after it (BERT's BertSelfOutput) as one op:
  // add_layer_norm(bsr_int8_linear(x, ..., act_quant, "none"), residual, norm_weight, norm_bias,
  // norm_eps); same numbers as the two ops.
  m.def(
      "bsr_int8_linear_add_layer_norm(Tensor x, Tensor values, Tensor weight_scale, Tensor weight_sum, "
      "Tensor crow_indices, Tensor col_indices, Tensor? bias, int[2] shape, int[2] block_size, str act_quant, "
      "Tensor residual, Tensor norm_weight, Tensor norm_bias, float norm_eps) -> Tensor");
  // The dense case: weight [ceil(N/32), ceil(K/4), 32, 4], the k-quad packing of 32-output rows.
  m.def(
      "int8_linear(Tensor x, Tensor weight, Tensor weight_scale, Tensor weight_sum, Tensor? bias, "
      "int[2] shape, str act_quant=\"per_token\", str activation=\"none\") -> Tensor");
  // Weight-only (mixed precision): y = x @ (W_q * weight_scale[:, None]).T + bias with x in
  // float32/bfloat16 as it is; weight [ceil(N/32), K, 32, 1] int8 (sparsebert.ops.int8_format).
  m.def(
      "int8_weight_only_linear(Tensor x, Tensor weight, Tensor weight_scale, Tensor? bias, int[2] shape) -> Tensor");
  // softmax(scale * q @ k^T + mask) @ v for q, k, v [batch, heads, seq, head_dim]; scale defaults
  // to 1/sqrt(head_dim). mask: none, a key-padding mask [batch, key_seq] (nonzero = keep), or a
  // bool (True = keep) or additive float mask broadcastable to [batch, heads, q_seq, key_seq].
  // A query row with no kept key gets zeros (as torch's scaled_dot_product_attention).
  // precision: "fp32" (the inputs as they are), "bf16" (q, k and v rounded to bf16 before the
  // two matmuls, which accumulate in fp32; the output keeps q's dtype) or "int8" (q, k per row and
  // v per column quantized to int8, the probabilities to 0..255, both matmuls exact in int32; CPU
  // only; defined by sparsebert.ops.attention_reference).
  m.def(
      "attention(Tensor q, Tensor k, Tensor v, Tensor? mask=None, float? scale=None, str precision=\"fp32\") -> Tensor");
  // The same over packed tokens [total_tokens, heads, head_dim]: sequence b is tokens
  // cu_seqlens[b] .. cu_seqlens[b + 1] (int32, non-decreasing, from 0 to total_tokens) and attends
  // to itself only; max_seqlen >= the longest sequence. No padding anywhere.
  m.def(
      "attention_varlen(Tensor q, Tensor k, Tensor v, Tensor cu_seqlens, int max_seqlen, float? scale=None, "
      "str precision=\"fp32\") -> Tensor");
  // LayerNorm(x + residual) over the last dim with weight and bias [hidden]: the residual add and
  // the normalization after a transformer block's output projection in one pass. x, residual,
  // weight and bias share one dtype (float32 or bfloat16: the sum is rounded to it, as an add in
  // that dtype would be, and normalized in fp32).
  m.def("add_layer_norm(Tensor x, Tensor residual, Tensor weight, Tensor bias, float eps) -> Tensor");
}

namespace {

PyObject* py_detected_isa(PyObject*, PyObject*) {
  return PyUnicode_FromString(sparsebert::isa_name(sparsebert::detected_isa()));
}

PyObject* py_active_isa(PyObject*, PyObject*) {
  try {
    return PyUnicode_FromString(sparsebert::isa_name(sparsebert::active_isa()));
  } catch (const c10::Error& e) {  // the message alone, without the C++ backtrace
    PyErr_SetString(PyExc_ValueError, e.what_without_backtrace());
    return nullptr;
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_ValueError, e.what());
    return nullptr;
  }
}

PyObject* py_int8_dot(PyObject*, PyObject*) {
  try {
    return PyUnicode_FromString(sparsebert::int8_dot_name(sparsebert::active_int8_dot(sparsebert::active_isa())));
  } catch (const c10::Error& e) {
    PyErr_SetString(PyExc_ValueError, e.what_without_backtrace());
    return nullptr;
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_ValueError, e.what());
    return nullptr;
  }
}

PyObject* py_peak_ops(PyObject*, PyObject* args) {
  const char* kind = nullptr;
  long long iters = 0;
  if (!PyArg_ParseTuple(args, "sL", &kind, &iters)) return nullptr;
  const std::string name(kind);
  sparsebert::PeakMeasurement m{};
  std::string error;
  PyObject* error_type = nullptr;
  // The loops run without the GIL; an exception is turned into a Python error after it is back.
  Py_BEGIN_ALLOW_THREADS
  try {
    m = sparsebert::measure_peak(name, iters);
  } catch (const std::invalid_argument& e) {
    error = e.what();
    error_type = PyExc_ValueError;
  } catch (const std::exception& e) {
    error = e.what();
    error_type = PyExc_RuntimeError;
  }
  Py_END_ALLOW_THREADS
  if (error_type != nullptr) {
    PyErr_SetString(error_type, error.c_str());
    return nullptr;
  }
  return Py_BuildValue("(ddi)", m.ops, m.seconds, m.threads);
}

PyMethodDef methods[] = {
    {"detected_isa", py_detected_isa, METH_NOARGS,
     "The best CPU ISA level this machine supports: scalar, avx2, avx512, avx512bf16 or amx."},
    {"active_isa", py_active_isa, METH_NOARGS,
     "The ISA level CPU kernels use now (detected_isa(), or SPARSEBERT_ISA if set)."},
    {"int8_dot", py_int8_dot, METH_NOARGS,
     "The INT8 dot product the CPU kernels use now at the active level: avx512-vnni, avx-vnni (256-bit, "
     "VEX), avx512-vnni-256 (256-bit, EVEX: the avx2 level forced on an AVX-512 VNNI CPU) or none "
     "(SPARSEBERT_VNNI=0, or a CPU without VNNI)."},
    {"peak_ops", py_peak_ops, METH_VARARGS,
     "peak_ops(kind, iters) -> (ops, seconds, threads): one peak loop (fp32_fma, bf16_dot, int8_vnni, or at "
     "the amx level int8_amx and bf16_amx) of "
     "`iters` iterations on every thread of torch's pool at once; ops counts a multiply-add as 2."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "sparsebert C++ kernels", -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&module_def); }
