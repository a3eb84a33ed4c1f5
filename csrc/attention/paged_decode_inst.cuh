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
  const dim3 grid(num_rows, p.num_splits, p.num_kv_heads);
  decode::paged_decode_kernel<T, D, VLLM><<<grid, decode::kThreads, smem, stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
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
