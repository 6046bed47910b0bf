// add_layer_norm built for scalar (flags from setup.py by file name).
#include "layer_norm_impl.h"

namespace sparsebert {
namespace cpu {

void add_layer_norm_scalar(const AddLayerNormArgs& a, int64_t begin, int64_t end) { add_layer_norm_rows(a, begin, end); }

}  // namespace cpu
}  // namespace sparsebert
