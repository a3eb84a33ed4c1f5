// write_kv_cache: scatter new keys / values [T, kv_heads, head_dim] into the
// paged cache at slot_mapping[t] = block * block_size + offset (negative: skip).
//
// Napkin math: a decode step writes T * kv_heads * head_dim * 2 elements and
// reads as many; tiny next to the attention read, so one CTA per token with one
// thread per 16-byte chunk of (head, 8 dims) is plenty.
//   "vllm": key [nb, kvh, D/x, bs, x] -> a chunk of x dims is 16 contiguous bytes;
//           value [nb, kvh, D, bs] -> the dims of one token are bs apart (scalar stores).
//   "nhd":  key/value [nb, bs, kvh, D] -> 16-byte stores for both.
#pragma once

#include <cstdint>

#include "common/types.cuh"

namespace ferrum::attn {

struct KvWriteParams {
  const void* key;
  const void* value;
  void* key_cache;
  void* value_cache;
  const void* slot_mapping;
  int64_t key_token_stride, key_head_stride;      // elements
  int64_t value_token_stride, value_head_stride;  // elements
  int num_kv_heads, head_dim, block_size;
  bool vllm_layout;
};

// VEC: elements per access (16 bytes when the rows allow it, else 1).
template <typename T, typename Idx, int VEC>
__global__ void write_kv_cache_kernel(const KvWriteParams p) {
  const int64_t t = blockIdx.x;
  const int64_t slot = static_cast<int64_t>(static_cast<const Idx*>(p.slot_mapping)[t]);
  if (slot < 0) return;
  const int64_t block = slot / p.block_size;
  const int off = static_cast<int>(slot % p.block_size);
  const int D = p.head_dim, kvh = p.num_kv_heads, bs = p.block_size;
  const int chunks = D / VEC;
  const T* key = static_cast<const T*>(p.key) + t * p.key_token_stride;
  const T* value = static_cast<const T*>(p.value) + t * p.value_token_stride;
  T* kc = static_cast<T*>(p.key_cache);
  T* vc = static_cast<T*>(p.value_cache);
  for (int i = threadIdx.x; i < kvh * chunks; i += blockDim.x) {
    const int h = i / chunks, d0 = (i % chunks) * VEC;
    const Packed<T, VEC> k = load_packed<T, VEC>(key + h * p.key_head_stride + d0);
    const Packed<T, VEC> v = load_packed<T, VEC>(value + h * p.value_head_stride + d0);
    const int64_t head_base = (block * kvh + h) * static_cast<int64_t>(D) * bs;  // same for both layouts' [nb, kvh] prefix
    if (p.vllm_layout) {
      constexpr int X = 16 / sizeof(T);
      if constexpr (VEC == X) {
        store_packed<T, VEC>(kc + head_base + (static_cast<int64_t>(d0 / X) * bs + off) * X, k);
      } else {
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
          const int d = d0 + j;
          kc[head_base + (static_cast<int64_t>(d / X) * bs + off) * X + d % X] = k.v[j];
        }
      }
#pragma unroll
      for (int j = 0; j < VEC; ++j) vc[head_base + static_cast<int64_t>(d0 + j) * bs + off] = v.v[j];
    } else {
      const int64_t base = ((block * bs + off) * kvh + h) * static_cast<int64_t>(D) + d0;
      store_packed<T, VEC>(kc + base, k);
      store_packed<T, VEC>(vc + base, v);
    }
  }
}

}  // namespace ferrum::attn
