// attention built for baseline x86-64 (SSE2): W = 4 floats per xmm. fp32, and bf16 widened to fp32.
#define SPARSEBERT_ATTN_W 4
#define SPARSEBERT_ATTN_RR 4
#define SPARSEBERT_ATTN_CN 2
#include "attention_impl.h"

namespace sparsebert {
namespace cpu {

void attention_scalar(const AttentionArgs& a, const int64_t* tasks, int64_t n) { attention_run(a, tasks, n); }

}  // namespace cpu
}  // namespace sparsebert
