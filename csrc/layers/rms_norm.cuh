// RMSNorm, plain and fused with the residual add. One CTA per row.
//
// Numerics follow Hugging Face LLaMA/Qwen: statistics in fp32, the normalised
// row rounded to T before the multiply by the weight, and (fused variant) the
// residual sum rounded to T before it is normalised, since that rounded sum is
// what the next layer reads.
//
// Bytes: rows * hidden * sizeof(T) read and written (plus the residual read and
// written in the fused variant); the second pass over a row re-reads it from
// L1/L2, not DRAM.
#pragma once

#include "common/reduce.cuh"
#include "common/types.cuh"

namespace ferrum {

template <typename T>
__device__ __forceinline__ T rms_scale(float x, float inv_rms, T w) {
  return from_float<T>(to_float(from_float<T>(x * inv_rms)) * to_float(w));
}

// VEC elements per access: 16 / sizeof(T) when the row and its stride allow
// 16-byte accesses, else 1.
template <typename T, int VEC>
__global__ void rms_norm_kernel(T* __restrict__ out, const T* __restrict__ in, int64_t in_row_stride,
                                const T* __restrict__ weight, int hidden, float eps) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const T* x = in + row * in_row_stride;
  T* y = out + row * static_cast<int64_t>(hidden);
  const int num_vecs = hidden / VEC;

  float sum_sq = 0.f;
  for (int i = threadIdx.x; i < num_vecs; i += blockDim.x) {
    const auto v = load_packed<T, VEC>(x + i * VEC);
#pragma unroll
    for (int j = 0; j < VEC; ++j) sum_sq += to_float(v.v[j]) * to_float(v.v[j]);
  }
  const float inv_rms = rsqrtf(block_sum(sum_sq, scratch) / hidden + eps);

  for (int i = threadIdx.x; i < num_vecs; i += blockDim.x) {
    const auto v = load_packed<T, VEC>(x + i * VEC);
    const auto w = load_packed<T, VEC>(weight + i * VEC);
    Packed<T, VEC> r;
#pragma unroll
    for (int j = 0; j < VEC; ++j) r.v[j] = rms_scale(to_float(v.v[j]), inv_rms, w.v[j]);
    store_packed(y + i * VEC, r);
  }
}

// residual[row] = input[row] + residual[row]  (rounded to T)
// out[row]      = rms_norm(residual[row]) * weight
// out may alias input: every element is read and written by the same thread.
template <typename T, int VEC>
__global__ void fused_add_rms_norm_kernel(T* out, const T* input, int64_t input_row_stride,
                                          T* __restrict__ residual, int64_t residual_row_stride,
                                          const T* __restrict__ weight, int hidden, float eps) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const T* x = input + row * input_row_stride;
  T* res = residual + row * residual_row_stride;
  T* y = out + row * static_cast<int64_t>(hidden);
  const int num_vecs = hidden / VEC;

  float sum_sq = 0.f;
  for (int i = threadIdx.x; i < num_vecs; i += blockDim.x) {
    const auto a = load_packed<T, VEC>(x + i * VEC);
    auto r = load_packed<T, VEC>(res + i * VEC);
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      r.v[j] = from_float<T>(to_float(a.v[j]) + to_float(r.v[j]));
      const float s = to_float(r.v[j]);
      sum_sq += s * s;
    }
    store_packed(res + i * VEC, r);
  }
  const float inv_rms = rsqrtf(block_sum(sum_sq, scratch) / hidden + eps);

  for (int i = threadIdx.x; i < num_vecs; i += blockDim.x) {
    const auto r = load_packed<T, VEC>(res + i * VEC);
    const auto w = load_packed<T, VEC>(weight + i * VEC);
    Packed<T, VEC> o;
#pragma unroll
    for (int j = 0; j < VEC; ++j) o.v[j] = rms_scale(to_float(r.v[j]), inv_rms, w.v[j]);
    store_packed(y + i * VEC, o);
  }
}

}  // namespace ferrum
