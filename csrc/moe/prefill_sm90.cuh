// Memory-bound helper kernels of the Hopper prefill tier (prefill_sm90.cu), around the two
// CUTLASS grouped GEMMs (grouped_gemm_sm90_impl.cuh). Rows are "sorted rows": moe_align with
// block_m = 1 lists the valid pairs p = t*k + j grouped by expert (ascending p inside), with no
// padding, so expert e owns the sorted rows [offsets[e], offsets[e + 1]) and num_valid rows are
// in use (pairs with ids outside [0, E) are not listed).
//
//   offsets: offsets[e] = lower bound of e in block_expert[0 : num_valid]; O(E log P).
//   inverse: inv[sorted[i]] = i for i < num_valid (P*8 bytes; folded into the offsets kernel).
//   gather:  by token (moe_gather_tokens_kernel): one warp per token t reads hidden[t] once and
//            writes it to xs[inv[t*k + j]] for each valid j. Bytes: T*H*e read + P*H*e written;
//            30B T=16384: 67 MB in, 268 MB out. (The row-order kernel, moe_gather_rows_kernel, kept
//            for an A/B switch in prefill_sm90.cu, reads hidden k times in expert order: T*H*e = 67 MB
//            does not stay in the 50 MB L2, so it read ~P*H*e from DRAM: 340 us at T=16384.)
//   silu:    h[i] = silu(gu[i, :I]) * gu[i, I:] in fp32, rounded once. P*3I*e bytes.
//   combine: out[t] = sum_j w[t, j] * ys[inv[t*k + j]] (valid ids only), fp32, fixed j order,
//            4 row loads in flight per thread, one CTA per token: deterministic and row-independent
//            like combine.cuh.
#pragma once

#include "common/types.cuh"
#include "moe/moe_common.cuh"

namespace ferrum::moe {

// Rows handled by one CTA of the row kernels (one warp per row).
constexpr int kRowsPerCta = 8;

// Threads e <= E write offsets[e]; with inv != nullptr the grid also writes inv[sorted[i]] = i for
// i < num_valid (grid-stride; inv entries of invalid pairs stay unset: nothing reads them).
__global__ void moe_expert_offsets_kernel(const int* __restrict__ block_expert, const int* __restrict__ num_valid,
                                          int num_experts, int* __restrict__ offsets,
                                          const int* __restrict__ sorted_ids, int* __restrict__ inv) {
  const int n = __ldg(num_valid);
  if (inv != nullptr) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
      inv[__ldg(sorted_ids + i)] = i;
    }
  }
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

// One warp per token (kRowsPerCta tokens per CTA): hidden[t] is read once, in rounds of 4 16-byte
// chunks per lane (2 KB per warp in flight), and each round is stored to the k sorted rows of t.
// inv comes from moe_expert_offsets_kernel; pairs with ids outside [0, E) have no sorted row.
template <typename T>
__global__ void __launch_bounds__(kRowsPerCta * 32) moe_gather_tokens_kernel(
    const T* __restrict__ hidden, int num_tokens, int hidden_size, int top_k, int num_experts,
    const int* __restrict__ ids, const int* __restrict__ inv, T* __restrict__ xs) {
  const int t = blockIdx.x * kRowsPerCta + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (t >= num_tokens) return;
  const uint4* src = reinterpret_cast<const uint4*>(hidden + static_cast<int64_t>(t) * hidden_size);
  const int chunks = hidden_size / 8;
  for (int c0 = 0; c0 < chunks; c0 += 128) {
    uint4 v[4];
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const int c = c0 + q * 32 + lane;
      if (c < chunks) v[q] = __ldg(src + c);
    }
    for (int j = 0; j < top_k; ++j) {
      const int64_t p = static_cast<int64_t>(t) * top_k + j;
      const int e = __ldg(ids + p);
      if (e < 0 || e >= num_experts) continue;
      uint4* dst = reinterpret_cast<uint4*>(xs + static_cast<int64_t>(__ldg(inv + p)) * hidden_size);
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const int c = c0 + q * 32 + lane;
        if (c < chunks) dst[c] = v[q];
      }
    }
  }
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
    // Pairs in groups of 4: the 4 row loads are issued before any is used (bytes in flight), then
    // accumulated in j order (the same fmaf sequence as one pair at a time).
    for (int j0 = 0; j0 < top_k; j0 += 4) {
      Vec16<T> v[4];
      float w[4];
      bool ok[4];
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        const int j = j0 + u;
        const int64_t p = t * top_k + j;
        const int e = j < top_k ? __ldg(ids + p) : -1;
        ok[u] = e >= 0 && e < num_experts;  // padding pair: never listed, inv[p] unset
        w[u] = 0.f;
        if (ok[u]) {
          w[u] = __ldg(weights + p);
          v[u] = load_vec16(ys + static_cast<int64_t>(__ldg(inv + p)) * hidden_size + c * 8);
        }
      }
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        if (!ok[u]) continue;
#pragma unroll
        for (int q = 0; q < 8; ++q) acc[q] = fmaf(w[u], to_float(v[u].v[q]), acc[q]);
      }
    }
    Vec16<T> o;
#pragma unroll
    for (int q = 0; q < 8; ++q) o.v[q] = from_float<T>(acc[q]);
    store_vec16(out + t * hidden_size + c * 8, o);
  }
}

}  // namespace ferrum::moe
