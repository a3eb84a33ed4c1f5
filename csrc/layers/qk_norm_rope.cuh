// The attention prologue of one token, fused: split the qkv row, per-head
// RMSNorm on q and k (Qwen3's q_norm / k_norm, optional), half-split RoPE
// (x1 = x[:D/2], x2 = x[D/2:]; x1' = x1 cos - x2 sin, x2' = x2 cos + x1 sin),
// q to a token-major [T, H, D] output, k and v straight into the paged cache.
//
// One CTA per token, one warp per head; lane l owns the rotation pairs
// (i, i + D/2) for i = l, l + 32, ... so a head's norm is one warp reduction
// and the rotation needs no shuffles. Bytes: the qkv row read once, q written,
// k and v written into the cache: (H + 2 KVH) * D * 2 elements per token.
#pragma once

#include "common/reduce.cuh"
#include "common/types.cuh"

namespace ferrum {

constexpr int kMaxRopePairsPerLane = 4;  // D <= 256

struct QkNormRopeParams {
  const void* qkv;
  int64_t qkv_row_stride;
  const void* positions;  // int32 or int64 [T]
  const void* slot_mapping;  // int32 or int64 [T]; negative: no cache write
  bool index64;
  const float* cos;  // [max_positions, D/2]
  const float* sin;
  int64_t max_positions;
  const void* q_norm_weight;  // [D] or null
  const void* k_norm_weight;
  void* q_out;  // [T, H, D]
  void* key_cache;
  void* value_cache;
  int num_heads, num_kv_heads, head_dim, block_size;
  bool vllm_layout;  // else NHD
  float eps;
};

__device__ __forceinline__ int64_t load_index(const void* p, int64_t i, bool is64) {
  return is64 ? static_cast<const int64_t*>(p)[i] : static_cast<const int32_t*>(p)[i];
}

// Element offset of (slot, kv head, dim) in the key / value cache.
__device__ __forceinline__ int64_t key_offset(const QkNormRopeParams& p, int64_t slot, int h, int d, int x) {
  const int64_t block = slot / p.block_size, off = slot % p.block_size;
  if (!p.vllm_layout) return ((block * p.block_size + off) * p.num_kv_heads + h) * p.head_dim + d;
  // [num_blocks, kv_heads, D / x, block_size, x]
  return (((block * p.num_kv_heads + h) * (p.head_dim / x) + d / x) * p.block_size + off) * x + d % x;
}

__device__ __forceinline__ int64_t value_offset(const QkNormRopeParams& p, int64_t slot, int h, int d) {
  const int64_t block = slot / p.block_size, off = slot % p.block_size;
  if (!p.vllm_layout) return ((block * p.block_size + off) * p.num_kv_heads + h) * p.head_dim + d;
  // [num_blocks, kv_heads, D, block_size]
  return ((block * p.num_kv_heads + h) * p.head_dim + d) * p.block_size + off;
}

template <typename T>
__global__ void qk_norm_rope_write_cache_kernel(const QkNormRopeParams p) {
  const int64_t t = blockIdx.x;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, num_warps = blockDim.x / 32;
  const int half = p.head_dim / 2;
  const T* row = static_cast<const T*>(p.qkv) + t * p.qkv_row_stride;
  const int64_t pos = load_index(p.positions, t, p.index64);
  const int64_t slot = load_index(p.slot_mapping, t, p.index64);
  constexpr int kX = 16 / sizeof(T);

  for (int head = warp; head < p.num_heads + 2 * p.num_kv_heads; head += num_warps) {
    const bool is_q = head < p.num_heads, is_v = head >= p.num_heads + p.num_kv_heads;
    const int kv_head = head - p.num_heads - (is_v ? p.num_kv_heads : 0);
    if (!is_q && slot < 0) continue;  // a padding row writes nothing to the cache
    const T* src = row + static_cast<int64_t>(head) * p.head_dim;

    float x1[kMaxRopePairsPerLane], x2[kMaxRopePairsPerLane];
    float sum_sq = 0.f;
#pragma unroll
    for (int m = 0; m < kMaxRopePairsPerLane; ++m) {
      const int i = lane + 32 * m;
      x1[m] = i < half ? to_float(src[i]) : 0.f;
      x2[m] = i < half ? to_float(src[i + half]) : 0.f;
      sum_sq += x1[m] * x1[m] + x2[m] * x2[m];
    }

    if (is_v) {
      T* cache = static_cast<T*>(p.value_cache);
#pragma unroll
      for (int m = 0; m < kMaxRopePairsPerLane; ++m) {
        const int i = lane + 32 * m;
        if (i >= half) continue;
        cache[value_offset(p, slot, kv_head, i)] = from_float<T>(x1[m]);
        cache[value_offset(p, slot, kv_head, i + half)] = from_float<T>(x2[m]);
      }
      continue;
    }

    const T* norm_w = static_cast<const T*>(is_q ? p.q_norm_weight : p.k_norm_weight);
    if (norm_w != nullptr) {
      // As Hugging Face: fp32 statistics, round, scale by the weight, round.
      const float inv_rms = rsqrtf(warp_sum(sum_sq) / p.head_dim + p.eps);
#pragma unroll
      for (int m = 0; m < kMaxRopePairsPerLane; ++m) {
        const int i = lane + 32 * m;
        if (i >= half) continue;
        x1[m] = to_float(from_float<T>(to_float(from_float<T>(x1[m] * inv_rms)) * to_float(norm_w[i])));
        x2[m] = to_float(from_float<T>(to_float(from_float<T>(x2[m] * inv_rms)) * to_float(norm_w[i + half])));
      }
    }

#pragma unroll
    for (int m = 0; m < kMaxRopePairsPerLane; ++m) {
      const int i = lane + 32 * m;
      if (i >= half) continue;
      // A position past the tables poisons the row (NaN) instead of reading out of bounds.
      const bool in_table = pos >= 0 && pos < p.max_positions;
      const float c = in_table ? p.cos[pos * half + i] : __int_as_float(0x7fc00000);
      const float s = in_table ? p.sin[pos * half + i] : 0.f;
      const T r1 = from_float<T>(x1[m] * c - x2[m] * s);
      const T r2 = from_float<T>(x2[m] * c + x1[m] * s);
      if (is_q) {
        T* q = static_cast<T*>(p.q_out) + (t * p.num_heads + head) * p.head_dim;
        q[i] = r1;
        q[i + half] = r2;
      } else {
        T* cache = static_cast<T*>(p.key_cache);
        cache[key_offset(p, slot, kv_head, i, kX)] = r1;
        cache[key_offset(p, slot, kv_head, i + half, kX)] = r2;
      }
    }
  }
}

}  // namespace ferrum
