// The loop every peak measurement shares, written once; each peak_<isa>.cpp instantiates it with
// its instruction. Internal linkage: include only from those files, so each instantiation keeps
// the instruction set of the file that compiled it.
#pragma once

#include "peak_kernel.h"

namespace sparsebert {
namespace cpu {
namespace {

// kChains independent accumulators, acc[i] = step(acc[i]) for `iters` iterations (enough chains
// to cover the instruction's latency on every core this targets, nothing else in the loop); then
// add() folds them and sink() turns the fold into the float that keeps every chain alive.
// ops_per_step: operations of one instruction, a multiply-add counting 2.
template <int kChains, class V, class Init, class Step, class Add, class Sink>
inline PeakResult run_chains(int64_t iters, double ops_per_step, Init init, Step step, Add add, Sink sink) {
  V acc[kChains];
  for (int i = 0; i < kChains; ++i) acc[i] = init(i);
  for (int64_t it = 0; it < iters; ++it) {
#pragma GCC unroll 16
    for (int i = 0; i < kChains; ++i) acc[i] = step(acc[i]);
  }
  V s = acc[0];
  for (int i = 1; i < kChains; ++i) s = add(s, acc[i]);
  return {double(iters) * kChains * ops_per_step, sink(s)};
}

}  // namespace
}  // namespace cpu
}  // namespace sparsebert
