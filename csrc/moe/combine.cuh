// Weighted combine of the k expert outputs of each token:
//   out[t, :] = sum_{j = 0..k-1, ids[t, j] valid} weights[t, j] * y[t * k + j, :]
// in fp32, in fixed j order, one CTA per token: no atomics, so a row's result is
// bit-identical run to run and independent of the batch's other rows.
// Bytes: T * k * H * sizeof(T) read + T * H * sizeof(T) written. Launched with PDL (common/pdl_launch.h).
#pragma once

#include "common/types.cuh"
#include "moe/moe_common.cuh"

namespace ferrum::moe {

template <typename T>
__global__ void moe_combine_kernel(T* __restrict__ out, const T* __restrict__ y, const float* __restrict__ weights,
                                   const int* __restrict__ ids, int top_k, int hidden, int num_experts) {
  pdl_wait();  // y comes from the down GEMM launched just before (PDL)
  pdl_launch_dependents();
  const int64_t t = blockIdx.x;
  const int chunks = hidden / 8;
  for (int c = threadIdx.x; c < chunks; c += blockDim.x) {
    float acc[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) acc[i] = 0.f;
    for (int j = 0; j < top_k; ++j) {
      const int64_t p = t * top_k + j;
      const int e = __ldg(ids + p);
      if (e < 0 || e >= num_experts) continue;  // padding pair: its y row was never written
      const float w = __ldg(weights + p);
      const Vec16<T> v = load_vec16(y + p * hidden + c * 8);
#pragma unroll
      for (int i = 0; i < 8; ++i) acc[i] = fmaf(w, to_float(v.v[i]), acc[i]);
    }
    Vec16<T> o;
#pragma unroll
    for (int i = 0; i < 8; ++i) o.v[i] = from_float<T>(acc[i]);
    store_vec16(out + t * hidden + c * 8, o);
  }
}

}  // namespace ferrum::moe
