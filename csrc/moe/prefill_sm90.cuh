// Memory-bound helper kernels of the Hopper prefill tier (prefill_sm90.cu), around the two
// CUTLASS grouped GEMMs (grouped_gemm_sm90_impl.cuh). Rows are "sorted rows": moe_align with
// block_m = 1 lists the valid pairs p = t*k + j grouped by expert (ascending p inside), with no
// padding, so expert e owns the sorted rows [offsets[e], offsets[e + 1]) and num_valid rows are
// in use (pairs with ids outside [0, E) are not listed).
//
//   offsets: offsets[e] = lower bound of e in block_expert[0 : num_valid]; O(E log P).
//   gather:  xs[i] = hidden[sorted[i] / k], inv[sorted[i]] = i.  Bytes: P*H*e read (L2-friendly:
//            each token row is read k times) + P*H*e written; 30B T=4096: 134 MB out.
//   silu:    h[i] = silu(gu[i, :I]) * gu[i, I:] in fp32, rounded once. P*3I*e bytes.
//   combine: out[t] = sum_j w[t, j] * ys[inv[t*k + j]] (valid ids only), fp32, fixed j order,
//            one CTA per token: deterministic and row-independent like combine.cuh.
#pragma once

#include "common/types.cuh"
#include "moe/moe_common.cuh"

namespace ferrum::moe {

// Rows handled by one CTA of the row kernels (one warp per row).
constexpr int kRowsPerCta = 8;

__global__ void moe_expert_offsets_kernel(const int* __restrict__ block_expert, const int* __restrict__ num_valid,
                                          int num_experts, int* __restrict__ offsets) {
  const int n = __ldg(num_valid);
  for (int e = blockIdx.x * blockDim.x + threadIdx.x; e <= num_experts; e += gridDim.x * blockDim.x) {
    int lo = 0, hi = n;
    if (e == num_experts) {
      lo = n;
    } else {
      while (lo < hi) {  // first sorted row whose expert is >= e
        const int mid = (lo + hi) >> 1;
        if (__ldg(block_expert + mid) < e) {
          lo = mid + 1;
        } else {
          hi = mid;
        }
      }
    }
    offsets[e] = lo;
  }
}

template <typename T>
__global__ void __launch_bounds__(kRowsPerCta * 32) moe_gather_rows_kernel(
    const T* __restrict__ hidden, int hidden_size, int top_k, const int* __restrict__ sorted_ids,
    const int* __restrict__ num_valid, T* __restrict__ xs, int* __restrict__ inv) {
  const int i = blockIdx.x * kRowsPerCta + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (i >= __ldg(num_valid)) return;
  const int p = __ldg(sorted_ids + i);
  if (lane == 0) inv[p] = i;
  const uint4* src = reinterpret_cast<const uint4*>(hidden + static_cast<int64_t>(p / top_k) * hidden_size);
  uint4* dst = reinterpret_cast<uint4*>(xs + static_cast<int64_t>(i) * hidden_size);
  const int chunks = hidden_size / 8;
  int c = lane;
  for (; c + 96 < chunks; c += 128) {  // 4 loads in flight per lane
    const uint4 v0 = __ldg(src + c), v1 = __ldg(src + c + 32), v2 = __ldg(src + c + 64), v3 = __ldg(src + c + 96);
    dst[c] = v0;
    dst[c + 32] = v1;
    dst[c + 64] = v2;
    dst[c + 96] = v3;
  }
  for (; c < chunks; c += 32) dst[c] = __ldg(src + c);
}

template <typename T>
__global__ void __launch_bounds__(kRowsPerCta * 32) moe_silu_mul_rows_kernel(
    const T* __restrict__ gu, int inter, const int* __restrict__ num_valid, T* __restrict__ h) {
  const int i = blockIdx.x * kRowsPerCta + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (i >= __ldg(num_valid)) return;
  const T* g_row = gu + static_cast<int64_t>(i) * 2 * inter;
  const T* u_row = g_row + inter;
  T* h_row = h + static_cast<int64_t>(i) * inter;
  for (int c = lane * 8; c < inter; c += 32 * 8) {
    const Vec16<T> g = load_vec16_stream(g_row + c);
    const Vec16<T> u = load_vec16_stream(u_row + c);
    Vec16<T> o;
#pragma unroll
    for (int q = 0; q < 8; ++q) o.v[q] = from_float<T>(silu_f(to_float(g.v[q])) * to_float(u.v[q]));
    store_vec16(h_row + c, o);
  }
}

template <typename T>
__global__ void moe_combine_sorted_kernel(T* __restrict__ out, const T* __restrict__ ys,
                                          const float* __restrict__ weights, const int* __restrict__ ids,
                                          const int* __restrict__ inv, int top_k, int hidden_size,
                                          int num_experts) {
  const int64_t t = blockIdx.x;
  const int chunks = hidden_size / 8;
  for (int c = threadIdx.x; c < chunks; c += blockDim.x) {
    float acc[8];
#pragma unroll
    for (int q = 0; q < 8; ++q) acc[q] = 0.f;
    for (int j = 0; j < top_k; ++j) {
      const int64_t p = t * top_k + j;
      const int e = __ldg(ids + p);
      if (e < 0 || e >= num_experts) continue;  // padding pair: never listed, inv[p] unset
      const float w = __ldg(weights + p);
      const Vec16<T> v = load_vec16(ys + static_cast<int64_t>(__ldg(inv + p)) * hidden_size + c * 8);
#pragma unroll
      for (int q = 0; q < 8; ++q) acc[q] = fmaf(w, to_float(v.v[q]), acc[q]);
    }
    Vec16<T> o;
#pragma unroll
    for (int q = 0; q < 8; ++q) o.v[q] = from_float<T>(acc[q]);
    store_vec16(out + t * hidden_size + c * 8, o);
  }
}

}  // namespace ferrum::moe
