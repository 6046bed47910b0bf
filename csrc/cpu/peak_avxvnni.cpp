// INT8 peak of AVX-VNNI (VEX vpdpbusd on ymm): see peak_vnni256.h.
#include <immintrin.h>

#define SPARSEBERT_DPBUSD256(acc, u8, s8) _mm256_dpbusd_avx_epi32((acc), (u8), (s8))
#include "peak_vnni256.h"

namespace sparsebert {
namespace cpu {

PeakResult peak_int8_vnni256_avxvnni(int64_t iters) { return peak_int8_vnni256(iters); }

}  // namespace cpu
}  // namespace sparsebert
