// Definitions of the launch helpers of paged_attention_launch.h; included by
// one .cu file per dtype, which instantiates them with FERRUM_ATTN_INSTANTIATE.
#pragma once

#include <c10/cuda/CUDAException.h>

#include "attention/paged_attention.cuh"
#include "attention/paged_attention_launch.h"
#include "common/device_info.h"
#include "common/pdl_launch.h"

namespace ferrum::attn {

// CTAs of paged_attention_kernel<T, D, MT, kVllm> resident per SM of the current device (at least 1),
// cached per device; the first call per device also raises the kernel's dynamic shared-memory limit
// to attn_smem_bytes<D, MT>(), which launch_attention relies on. A failed query raises.
template <typename T, int D, int MT, bool kVllm>
int ctas_per_sm() {
  return resident_blocks<paged_attention_kernel<T, D, MT, kVllm>, kThreads, attn_smem_bytes<D, MT>()>();
}

template <typename T, int D, int MT>
int attention_ctas_per_sm(bool vllm_layout) {
  return vllm_layout ? ctas_per_sm<T, D, MT, true>() : ctas_per_sm<T, D, MT, false>();
}

template <typename T, int D, int MT>
void launch_attention(const AttnParams& p, int num_tiles, cudaStream_t stream) {
  constexpr int smem = attn_smem_bytes<D, MT>();
  const dim3 grid(num_tiles, p.num_splits, p.num_kv_heads);
  if (p.vllm_layout) {
    launch_pdl(paged_attention_kernel<T, D, MT, true>, grid, dim3(kThreads), smem, stream, p);
  } else {
    launch_pdl(paged_attention_kernel<T, D, MT, false>, grid, dim3(kThreads), smem, stream, p);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T, int D>
void launch_merge(const AttnParams& p, int num_rows, cudaStream_t stream) {
  const dim3 grid(num_rows, p.num_heads);
  launch_pdl(merge_splits_kernel<T, D>, grid, dim3(kMergeThreads), 0, stream, p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace ferrum::attn

#define FERRUM_ATTN_INSTANTIATE_MT(T, D, MT)                                                                 \
  template void ferrum::attn::launch_attention<T, D, MT>(const ferrum::attn::AttnParams&, int, cudaStream_t); \
  template int ferrum::attn::attention_ctas_per_sm<T, D, MT>(bool);

#define FERRUM_ATTN_INSTANTIATE_D(T, D) \
  FERRUM_ATTN_INSTANTIATE_MT(T, D, 1)    \
  FERRUM_ATTN_INSTANTIATE_MT(T, D, 2)    \
  FERRUM_ATTN_INSTANTIATE_MT(T, D, 4)    \
  template void ferrum::attn::launch_merge<T, D>(const ferrum::attn::AttnParams&, int, cudaStream_t);

#define FERRUM_ATTN_INSTANTIATE(T) \
  FERRUM_ATTN_INSTANTIATE_D(T, 64) \
  FERRUM_ATTN_INSTANTIATE_D(T, 96) \
  FERRUM_ATTN_INSTANTIATE_D(T, 128) \
  FERRUM_ATTN_INSTANTIATE_D(T, 256)
