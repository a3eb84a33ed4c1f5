// RMSNorm, plain and fused with the residual add. One CTA per row.
//
// Numerics follow Hugging Face LLaMA/Qwen: statistics in fp32, the normalised
// row rounded to T before the multiply by the weight, and (fused variant) the
// residual sum rounded to T before it is normalised, since that rounded sum is
// what the next layer reads.
//
// Bytes: rows * hidden * sizeof(T) read and written (fused: input and residual
// read, residual and out written). Each thread keeps its ITERS packs of the row
// in registers between the statistics and the scaling, so a row is read from
// DRAM once and ITERS independent loads per thread are in flight; rows longer
// than ITERS * VEC * 1024 elements fall back to re-reading (from L1/L2).
#pragma once

#include "common/reduce.cuh"
#include "common/types.cuh"

namespace ferrum {

template <typename T>
__device__ __forceinline__ T rms_scale(float x, float inv_rms, T w) {
  return from_float<T>(to_float(from_float<T>(x * inv_rms)) * to_float(w));
}

// The row as num_packs packs of VEC elements; thread t owns packs t + k * blockDim.x.
// HAS_RESIDUAL: residual = input + residual (rounded), then normalise residual.
// out may alias input: every element is read and written by the same thread.
template <typename T, int VEC, int ITERS, bool HAS_RESIDUAL>
__global__ void rms_norm_kernel(T* out, const T* input, int64_t input_row_stride, T* residual,
                                int64_t residual_row_stride, const T* __restrict__ weight, int hidden,
                                float eps) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const T* x = input + row * input_row_stride;
  T* res = HAS_RESIDUAL ? residual + row * residual_row_stride : nullptr;
  T* y = out + row * static_cast<int64_t>(hidden);
  const int num_packs = hidden / VEC;

  // ITERS > 0: the whole row fits in registers (ITERS * blockDim.x >= num_packs).
  constexpr int kCached = ITERS > 0 ? ITERS : 1;
  Packed<T, VEC> cache[kCached], res_cache[HAS_RESIDUAL ? kCached : 1];
  float sum_sq = 0.f;
  auto accumulate = [&](Packed<T, VEC>& v, const Packed<T, VEC>& r, int p) {
    if constexpr (HAS_RESIDUAL) {
#pragma unroll
      for (int j = 0; j < VEC; ++j) v.v[j] = from_float<T>(to_float(v.v[j]) + to_float(r.v[j]));
      store_packed(res + p * VEC, v);
    }
#pragma unroll
    for (int j = 0; j < VEC; ++j) sum_sq += to_float(v.v[j]) * to_float(v.v[j]);
  };
  auto scale_and_store = [&](const Packed<T, VEC>& v, int p, float inv_rms) {
    const auto w = load_packed<T, VEC>(weight + p * VEC);
    Packed<T, VEC> o;
#pragma unroll
    for (int j = 0; j < VEC; ++j) o.v[j] = rms_scale(to_float(v.v[j]), inv_rms, w.v[j]);
    store_packed(y + p * VEC, o);
  };

  if constexpr (ITERS > 0) {
#pragma unroll
    for (int k = 0; k < ITERS; ++k) {
      const int p = threadIdx.x + k * blockDim.x;
      if (p < num_packs) {
        cache[k] = load_packed<T, VEC>(x + p * VEC);
        if constexpr (HAS_RESIDUAL) res_cache[k] = load_packed<T, VEC>(res + p * VEC);
      }
    }
#pragma unroll
    for (int k = 0; k < ITERS; ++k) {
      const int p = threadIdx.x + k * blockDim.x;
      if (p < num_packs) accumulate(cache[k], res_cache[HAS_RESIDUAL ? k : 0], p);
    }
    const float inv_rms = rsqrtf(block_sum(sum_sq, scratch) / hidden + eps);
#pragma unroll
    for (int k = 0; k < ITERS; ++k) {
      const int p = threadIdx.x + k * blockDim.x;
      if (p < num_packs) scale_and_store(cache[k], p, inv_rms);
    }
  } else {
    for (int p = threadIdx.x; p < num_packs; p += blockDim.x) {
      cache[0] = load_packed<T, VEC>(x + p * VEC);
      if constexpr (HAS_RESIDUAL) res_cache[0] = load_packed<T, VEC>(res + p * VEC);
      accumulate(cache[0], res_cache[0], p);
    }
    const float inv_rms = rsqrtf(block_sum(sum_sq, scratch) / hidden + eps);
    const T* src = HAS_RESIDUAL ? res : x;
    for (int p = threadIdx.x; p < num_packs; p += blockDim.x) {
      scale_and_store(load_packed<T, VEC>(src + p * VEC), p, inv_rms);
    }
  }
}

}  // namespace ferrum
