// attention built for AVX-512: W = 16 floats per zmm; 6 x 4
// accumulators + 5 fit the 32 registers. fp32, and bf16 widened to fp32.
#define SPARSEBERT_ATTN_W 16
#define SPARSEBERT_ATTN_RR 6
#define SPARSEBERT_ATTN_CN 4
#include "attention_impl.h"

namespace sparsebert {
namespace cpu {

void attention_avx512(const AttentionArgs& a, const int64_t* tasks, int64_t n) { attention_run(a, tasks, n); }

}  // namespace cpu
}  // namespace sparsebert
