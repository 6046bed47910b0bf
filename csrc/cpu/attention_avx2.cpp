// attention built for AVX2 + FMA: W = 8 floats per ymm; 6 x 2
// accumulators + 3 fit the 16 registers. fp32, and bf16 widened to fp32.
#define SPARSEBERT_ATTN_W 8
#define SPARSEBERT_ATTN_RR 6
#define SPARSEBERT_ATTN_CN 2
#include "attention_impl.h"

namespace sparsebert {
namespace cpu {

void attention_avx2(const AttentionArgs& a, const int64_t* tasks, int64_t n) { attention_run(a, tasks, n); }

}  // namespace cpu
}  // namespace sparsebert
