// Weighted combine of the k expert outputs of each token:
//   out[t, :] = sum_{j = 0..k-1, ids[t, j] valid} weights[t, j] * y[t * k + j, :]
// in fp32, in fixed j order, no atomics, so a row's result is bit-identical run to run and independent
// of the batch's other rows. Bytes: T * k * H * sizeof(T) read + T * H * sizeof(T) written.
// Launched with PDL (common/pdl_launch.h).
//
// moe_combine_kernel: grid (T, ceil(H / 8 / blockDim.x)), one 16-byte chunk of H per thread. The ids
// and weights of kCombineBatch routes are loaded first (before the wait: they are fused_moe's inputs,
// final long before the down GEMM, common/pdl_launch.h), then all their y chunks, then the FMAs in j order:
// one L2 round trip per batch instead of two dependent ones per route (at T = 1 the whole kernel is
// latency: 8 routes x 4 KB of y).
#pragma once

#include "common/types.cuh"
#include "moe/moe_common.cuh"

namespace ferrum::moe {

constexpr int kCombineBatch = 8;

template <typename T>
__global__ void moe_combine_kernel(T* __restrict__ out, const T* __restrict__ y, const float* __restrict__ weights,
                                   const int* __restrict__ ids, int top_k, int hidden, int num_experts) {
  const int64_t t = blockIdx.x;
  const int c = blockIdx.y * blockDim.x + threadIdx.x;
  const bool on = c < hidden / 8;
  const int64_t p0 = t * top_k;
  int e[kCombineBatch];
  float w[kCombineBatch];
  auto load_routes = [&](int j0) {
#pragma unroll
    for (int b = 0; b < kCombineBatch; ++b) {
      const int j = j0 + b;
      e[b] = j < top_k ? __ldg(ids + p0 + j) : -1;
      w[b] = j < top_k ? __ldg(weights + p0 + j) : 0.f;
    }
  };
  load_routes(0);
  pdl_wait();  // y comes from the down GEMM launched just before (PDL)
  pdl_launch_dependents();
  float acc[8];
#pragma unroll
  for (int i = 0; i < 8; ++i) acc[i] = 0.f;
  for (int j0 = 0;;) {
    Vec16<T> v[kCombineBatch];
#pragma unroll
    for (int b = 0; b < kCombineBatch; ++b) {
      // padding pairs (invalid ids): their y rows were never written
      if (on && e[b] >= 0 && e[b] < num_experts) v[b] = load_vec16(y + (p0 + j0 + b) * hidden + c * 8);
    }
#pragma unroll
    for (int b = 0; b < kCombineBatch; ++b) {
      if (!(on && e[b] >= 0 && e[b] < num_experts)) continue;
#pragma unroll
      for (int i = 0; i < 8; ++i) acc[i] = fmaf(w[b], to_float(v[b].v[i]), acc[i]);
    }
    j0 += kCombineBatch;
    if (j0 >= top_k) break;
    load_routes(j0);
  }
  if (on) {
    Vec16<T> o;
#pragma unroll
    for (int i = 0; i < 8; ++i) o.v[i] = from_float<T>(acc[i]);
    store_vec16(out + t * hidden + c * 8, o);
  }
}


}  // namespace ferrum::moe
