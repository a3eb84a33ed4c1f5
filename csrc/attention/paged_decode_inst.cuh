// Definitions of the decode-v2 launch helpers of paged_decode_launch.h;
// included by one .cu file per dtype (FERRUM_DECODE_V2_INSTANTIATE).
#pragma once

#include <atomic>

#include <c10/cuda/CUDAException.h>

#include "attention/paged_decode_launch.h"
#include "attention/paged_decode.cuh"

namespace ferrum::attn {

template <typename T, int D, bool VLLM>
int decode_v2_ctas_per_sm(int device) {
  constexpr int kMaxDevices = 64;
  static std::atomic<int> cache[kMaxDevices] = {};
  if (device >= 0 && device < kMaxDevices) {
    const int v = cache[device].load(std::memory_order_relaxed);
    if (v > 0) return v;
  }
  constexpr int smem = decode::smem_bytes<D>();
  auto* kernel = decode::paged_decode_kernel<T, D, VLLM>;
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  int n = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, decode::kThreads, smem));
  n = n > 0 ? n : 1;
  if (device >= 0 && device < kMaxDevices) cache[device].store(n, std::memory_order_relaxed);
  return n;
}

template <typename T, int D, bool VLLM>
void launch_decode_v2(const AttnParams& p, int num_rows, cudaStream_t stream) {
  constexpr int smem = decode::smem_bytes<D>();
  const dim3 grid(static_cast<unsigned>(num_rows) * p.num_splits * p.num_kv_heads);  // kv head fastest
  decode::paged_decode_kernel<T, D, VLLM><<<grid, decode::kThreads, smem, stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (p.num_splits <= 1) return;
  // The merge with programmatic dependent launch: its launch overlaps the attention
  // grid's tail (it waits in griddepcontrol.wait); capturable in CUDA graphs (CUDA >= 12.3).
  cudaLaunchConfig_t cfg = {};
  // Few (row, head) pairs (batch 1): slice head_dim into 32-column CTAs so the partial
  // reads spread over 4x more CTAs (8x at 256).
  const bool slice = static_cast<int64_t>(num_rows) * p.num_heads < 256;
  cfg.gridDim = dim3(num_rows, p.num_heads, slice ? D / 32 : 1);
  cfg.blockDim = dim3(decode::kThreads);
  cfg.dynamicSmemBytes = 0;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  if (cudaLaunchKernelEx(&cfg, decode::merge_kernel<T, D>, p) != cudaSuccess) {
    // No programmatic launch here (old driver): clear the error, launch plainly
    // (griddepcontrol.wait is then a no-op and stream order alone protects the partials).
    (void)cudaGetLastError();
    decode::merge_kernel<T, D><<<cfg.gridDim, cfg.blockDim, 0, stream>>>(p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

}  // namespace ferrum::attn

#define FERRUM_DECODE_V2_INSTANTIATE_DL(T, D, VLLM)                                                             \
  template void ferrum::attn::launch_decode_v2<T, D, VLLM>(const ferrum::attn::AttnParams&, int, cudaStream_t); \
  template int ferrum::attn::decode_v2_ctas_per_sm<T, D, VLLM>(int);

#define FERRUM_DECODE_V2_INSTANTIATE_D(T, D)   \
  FERRUM_DECODE_V2_INSTANTIATE_DL(T, D, true) \
  FERRUM_DECODE_V2_INSTANTIATE_DL(T, D, false)

#define FERRUM_DECODE_V2_INSTANTIATE(T)   \
  FERRUM_DECODE_V2_INSTANTIATE_D(T, 64)   \
  FERRUM_DECODE_V2_INSTANTIATE_D(T, 96)   \
  FERRUM_DECODE_V2_INSTANTIATE_D(T, 128)  \
  FERRUM_DECODE_V2_INSTANTIATE_D(T, 256)
