// Definition of launch_prefill (paged_prefill_launch.h); included by one .cu
// file per dtype, which instantiates it with FERRUM_PREFILL_INSTANTIATE.
#pragma once

#include <atomic>

#include <c10/cuda/CUDAException.h>

#include "attention/paged_prefill.cuh"
#include "attention/paged_prefill_launch.h"

namespace ferrum::attn::prefill {

template <typename T, int D>
void launch_prefill(const PrefillParams& p, int num_tiles, cudaStream_t stream) {
  constexpr int kMaxDevices = 64;
  static std::atomic<bool> configured[kMaxDevices] = {};
  constexpr int smem = prefill_smem_bytes<D>();
  // The tensor-map instantiation exists only where its boxes of 64 dims tile head_dim.
  constexpr bool kTmaD = D % 64 == 0;
  // "vllm": one instantiation, chosen at compile time (kVllmBulk; kKvVllmBulk is the cp.async
  // kernel below sm_90, so it serves every device).
  constexpr PrefillKv kVllmKv = kVllmBulk ? kKvVllmBulk : kKvVllm;
  auto* kernel = p.vllm_layout ? paged_prefill_kernel<T, D, kVllmKv> : paged_prefill_kernel<T, D, kKvNhd>;
  if constexpr (kTmaD) {
    if (kNhdTensorMaps && !p.vllm_layout && p.nhd_tma) kernel = paged_prefill_kernel<T, D, kKvNhdTma>;
  }
  int device = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  if (device < 0 || device >= kMaxDevices || !configured[device].load(std::memory_order_relaxed)) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(paged_prefill_kernel<T, D, kVllmKv>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    C10_CUDA_CHECK(cudaFuncSetAttribute(paged_prefill_kernel<T, D, kKvNhd>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    if constexpr (kTmaD) {
      C10_CUDA_CHECK(cudaFuncSetAttribute(paged_prefill_kernel<T, D, kKvNhdTma>,
                                          cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    }
    if (device >= 0 && device < kMaxDevices) configured[device].store(true, std::memory_order_relaxed);
  }
  if (num_tiles <= 0 || p.num_kv_heads <= 0) return;
  const dim3 grid(num_tiles, p.num_kv_heads);
  kernel<<<grid, PrefillCfg<D>::kThreads, smem, stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace ferrum::attn::prefill

#define FERRUM_PREFILL_INSTANTIATE(T)                                                                          \
  template void ferrum::attn::prefill::launch_prefill<T, 64>(const ferrum::attn::prefill::PrefillParams&, int, \
                                                             cudaStream_t);                                    \
  template void ferrum::attn::prefill::launch_prefill<T, 96>(const ferrum::attn::prefill::PrefillParams&, int, \
                                                             cudaStream_t);                                    \
  template void ferrum::attn::prefill::launch_prefill<T, 128>(const ferrum::attn::prefill::PrefillParams&,     \
                                                              int, cudaStream_t);                              \
  template void ferrum::attn::prefill::launch_prefill<T, 256>(const ferrum::attn::prefill::PrefillParams&,     \
                                                              int, cudaStream_t);
