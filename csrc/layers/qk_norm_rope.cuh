// The attention prologue of one token, fused: split the qkv row, per-head
// RMSNorm on q and k (Qwen3's q_norm / k_norm, optional), half-split RoPE
// (x1 = x[:D/2], x2 = x[D/2:]; x1' = x1 cos - x2 sin, x2' = x2 cos + x1 sin),
// q to a token-major [T, H, D] output, k and v straight into the paged cache.
//
// Each lane owns whole rotation pairs (i, i + D/2), so a head's norm is one reduction over its
// lanes and the rotation needs no shuffles: one warp per (token, head) in general, D / 16 lanes per
// head with 16-byte accesses at D = 64, 128, 256 (qk_norm_rope.cu picks; "vllm" v heads keep one
// warp each). Bytes: the qkv row read once, q written, k and v written into the cache:
// (H + 2 KVH) * D * 2 elements per token.
#pragma once

#include "common/reduce.cuh"
#include "common/types.cuh"

namespace ferrum {

constexpr int kMaxRopePairsPerLane = 4;  // D <= 256
constexpr int kQkNormRopeWarps = 4;    // per CTA, one (token, head) each

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
  int64_t num_tokens;
  int num_heads, num_kv_heads, head_dim, block_size;
  int head_begin, head_count;  // the launch covers heads [head_begin, head_begin + head_count) of every token
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

// Rotation pair (a, b) = (x[i], x[i + D/2]) of a head: the RMSNorm as Hugging Face computes it (fp32
// statistics, round, scale by the weight, round) when `norm`, then the half-split rotation by (c, s).
template <typename T>
__device__ __forceinline__ void norm_rotate_pair(float a, float b, bool norm, float inv_rms, float w_a, float w_b,
                                                 float c, float s, T& out_a, T& out_b) {
  if (norm) {
    a = to_float(from_float<T>(to_float(from_float<T>(a * inv_rms)) * w_a));
    b = to_float(from_float<T>(to_float(from_float<T>(b * inv_rms)) * w_b));
  }
  out_a = from_float<T>(a * c - b * s);
  out_b = from_float<T>(b * c + a * s);
}

// N rotated dims from i and from i + D/2 of a q head (token-major q_out) or a k head (the cache).
template <typename T, int N>
__device__ __forceinline__ void store_q_or_key(const QkNormRopeParams& p, bool is_q, int64_t t, int head,
                                               int64_t slot, int kv_head, int i, const Packed<T, N>& r1,
                                               const Packed<T, N>& r2) {
  const int half = p.head_dim / 2;
  if (is_q) {
    T* q = static_cast<T*>(p.q_out) + (t * p.num_heads + head) * p.head_dim;
    store_packed<T, N>(q + i, r1);
    store_packed<T, N>(q + i + half, r2);
    return;
  }
  // N <= 8 consecutive dims from a multiple of N stay inside one 16-byte x-group of the vllm layout.
  constexpr int kX = 16 / sizeof(T);
  T* cache = static_cast<T*>(p.key_cache);
  store_packed<T, N>(cache + key_offset(p, slot, kv_head, i, kX), r1);
  store_packed<T, N>(cache + key_offset(p, slot, kv_head, i + half, kX), r2);
}

// One warp per (token, head) of the qkv row: heads = H q heads, then KVH k heads, then
// KVH v heads. Every warp's loads are independent of every other's, so a token's 40
// heads are in flight at once instead of one after another (the kernel is a stream of
// tiny rows: latency, not arithmetic, is what it must hide). Lane l owns kVec consecutive
// rotation pairs per step, i = (m * 32 + l) * kVec + j, read and written as kVec-element
// vectors from each half of the head.
template <typename T, int kVec>
__global__ void __launch_bounds__(kQkNormRopeWarps * 32)
    qk_norm_rope_write_cache_kernel(const QkNormRopeParams p) {
  const int64_t item = int64_t(blockIdx.x) * kQkNormRopeWarps + threadIdx.x / 32;
  if (item >= p.num_tokens * p.head_count) return;
  const int64_t t = item / p.head_count;
  const int head = p.head_begin + static_cast<int>(item % p.head_count);
  const int lane = threadIdx.x % 32;
  const int half = p.head_dim / 2;
  const bool is_q = head < p.num_heads, is_v = head >= p.num_heads + p.num_kv_heads;
  const int kv_head = head - p.num_heads - (is_v ? p.num_kv_heads : 0);
  const int64_t slot = is_q ? 0 : load_index(p.slot_mapping, t, p.index64);
  if (slot < 0) return;  // a padding row writes nothing to the cache
  const T* src = static_cast<const T*>(p.qkv) + t * p.qkv_row_stride + static_cast<int64_t>(head) * p.head_dim;
  constexpr int kSteps = kMaxRopePairsPerLane / kVec;
  using V = Packed<T, kVec>;

  V x1[kSteps], x2[kSteps];
  float sum_sq = 0.f;
#pragma unroll
  for (int m = 0; m < kSteps; ++m) {
    const int i = (m * 32 + lane) * kVec;
    if (i < half) {
      x1[m] = load_packed<T, kVec>(src + i);
      x2[m] = load_packed<T, kVec>(src + i + half);
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        const float a = to_float(x1[m].v[j]), b = to_float(x2[m].v[j]);
        sum_sq += a * a + b * b;
      }
    }
  }

  if (is_v) {
    T* cache = static_cast<T*>(p.value_cache);
#pragma unroll
    for (int m = 0; m < kSteps; ++m) {
      const int i = (m * 32 + lane) * kVec;
      if (i >= half) continue;
      if (!p.vllm_layout) {
        store_packed<T, kVec>(cache + value_offset(p, slot, kv_head, i), x1[m]);
        store_packed<T, kVec>(cache + value_offset(p, slot, kv_head, i + half), x2[m]);
        continue;
      }
#pragma unroll
      for (int j = 0; j < kVec; ++j) {  // vllm values are dim-major: one element per dim
        cache[value_offset(p, slot, kv_head, i + j)] = x1[m].v[j];
        cache[value_offset(p, slot, kv_head, i + half + j)] = x2[m].v[j];
      }
    }
    return;
  }

  const T* norm_w = static_cast<const T*>(is_q ? p.q_norm_weight : p.k_norm_weight);
  const float inv_rms = norm_w != nullptr ? rsqrtf(warp_sum(sum_sq) / p.head_dim + p.eps) : 1.f;
  const int64_t pos = load_index(p.positions, t, p.index64);
  // A position past the tables poisons the row (NaN) instead of reading out of bounds.
  const bool in_table = pos >= 0 && pos < p.max_positions;
#pragma unroll
  for (int m = 0; m < kSteps; ++m) {
    const int i = (m * 32 + lane) * kVec;
    if (i >= half) continue;
    V r1, r2;
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      const bool norm = norm_w != nullptr;
      norm_rotate_pair<T>(to_float(x1[m].v[j]), to_float(x2[m].v[j]), norm, inv_rms,
                          norm ? to_float(norm_w[i + j]) : 1.f, norm ? to_float(norm_w[i + half + j]) : 1.f,
                          in_table ? p.cos[pos * half + i + j] : __int_as_float(0x7fc00000),
                          in_table ? p.sin[pos * half + i + j] : 0.f, r1.v[j], r2.v[j]);
    }
    store_q_or_key<T, kVec>(p, is_q, t, head, slot, kv_head, i, r1, r2);
  }
}

// Heads of 64, 128 or 256 dims, every access 16-byte aligned (q and k heads of either layout, v
// heads of "nhd" caches, whose rows are contiguous): kLanes = D / 16 consecutive lanes per head,
// each owning 8 consecutive rotation pairs (one 16-byte vector from each half), so a warp serves
// 32 / kLanes heads (the kernel above: one). That kernel is latency-bound: each warp moves 512
// bytes at D = 128 through a chain of dependent loads, a reduction and stores, and only so many
// warps fit on an SM; here each warp moves 4x as much per chain. Same arithmetic per element; the
// norm's sum of squares adds the head's lanes in a different order.
template <typename T, int kLanes>
__global__ void __launch_bounds__(kQkNormRopeWarps * 32)
    qk_norm_rope_write_cache_vec_kernel(const QkNormRopeParams p) {
  static_assert(sizeof(T) == 2 && (kLanes == 4 || kLanes == 8 || kLanes == 16), "D in {64, 128, 256}, 16-bit");
  constexpr int kVec = 8;
  constexpr int kHalf = kLanes * kVec;  // D / 2
  using V = Packed<T, kVec>;
  const int lane = threadIdx.x % 32;
  const int64_t item =
      (int64_t(blockIdx.x) * kQkNormRopeWarps + threadIdx.x / 32) * (32 / kLanes) + lane / kLanes;
  const int64_t t = item / p.head_count;
  const int head = p.head_begin + static_cast<int>(item - t * p.head_count);
  const bool is_q = head < p.num_heads, is_v = head >= p.num_heads + p.num_kv_heads;
  const int kv_head = head - p.num_heads - (is_v ? p.num_kv_heads : 0);
  const int i = (lane % kLanes) * kVec;
  // Lanes past the last token and k/v lanes of a padding row (negative slot: no cache write) only
  // join the shuffles.
  const int64_t slot = t < p.num_tokens && !is_q ? load_index(p.slot_mapping, t, p.index64) : 0;
  const bool live = t < p.num_tokens && slot >= 0;
  const int64_t pos = live && !is_v ? load_index(p.positions, t, p.index64) : 0;

  V x1{}, x2{};
  if (live) {
    const T* src = static_cast<const T*>(p.qkv) + t * p.qkv_row_stride + static_cast<int64_t>(head) * 2 * kHalf;
    x1 = load_packed<T, kVec>(src + i);
    x2 = load_packed<T, kVec>(src + i + kHalf);
  }
  float sum_sq = 0.f;
#pragma unroll
  for (int j = 0; j < kVec; ++j) {
    const float a = to_float(x1.v[j]), b = to_float(x2.v[j]);
    sum_sq += a * a + b * b;
  }
  // A head's lanes are kLanes consecutive, aligned lanes: xor offsets below kLanes stay inside it.
#pragma unroll
  for (int off = kLanes / 2; off > 0; off /= 2) sum_sq += __shfl_xor_sync(0xffffffffu, sum_sq, off);
  if (!live) return;

  if (is_v) {
    T* cache = static_cast<T*>(p.value_cache);
    store_packed<T, kVec>(cache + value_offset(p, slot, kv_head, i), x1);
    store_packed<T, kVec>(cache + value_offset(p, slot, kv_head, i + kHalf), x2);
    return;
  }

  const T* norm_w = static_cast<const T*>(is_q ? p.q_norm_weight : p.k_norm_weight);
  const float inv_rms = norm_w != nullptr ? rsqrtf(sum_sq / (2 * kHalf) + p.eps) : 1.f;
  V w1{}, w2{};
  if (norm_w != nullptr) {
    w1 = load_packed<T, kVec>(norm_w + i);
    w2 = load_packed<T, kVec>(norm_w + i + kHalf);
  }
  // A position past the tables poisons the row (NaN) instead of reading out of bounds.
  const bool in_table = pos >= 0 && pos < p.max_positions;
  Packed<float, kVec> c, s;
  if (in_table) {
    c = load_packed<float, kVec>(p.cos + pos * kHalf + i);
    s = load_packed<float, kVec>(p.sin + pos * kHalf + i);
  } else {
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      c.v[j] = __int_as_float(0x7fc00000);
      s.v[j] = 0.f;
    }
  }
  V r1, r2;
#pragma unroll
  for (int j = 0; j < kVec; ++j) {
    norm_rotate_pair<T>(to_float(x1.v[j]), to_float(x2.v[j]), norm_w != nullptr, inv_rms, to_float(w1.v[j]),
                        to_float(w2.v[j]), c.v[j], s.v[j], r1.v[j], r2.v[j]);
  }
  store_q_or_key<T, kVec>(p, is_q, t, head, slot, kv_head, i, r1, r2);
}

}  // namespace ferrum
