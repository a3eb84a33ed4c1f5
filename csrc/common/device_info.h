// Per-device attributes that launch plans depend on, queried once per device
// (host attribute queries: cheap after the first call and safe during graph capture).
#pragma once

#include <c10/cuda/CUDAException.h>
#include <cuda_runtime.h>

#include <atomic>

namespace ferrum {

template <cudaDeviceAttr kAttr>
int device_attribute(int device) {
  constexpr int kMaxDevices = 64;
  static std::atomic<int> cache[kMaxDevices] = {};
  const bool cached = device >= 0 && device < kMaxDevices;
  if (cached) {
    const int v = cache[device].load(std::memory_order_relaxed);
    if (v > 0) return v;
  }
  int value = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&value, kAttr, device));
  if (cached) cache[device].store(value, std::memory_order_relaxed);
  return value;
}

inline int sm_count(int device) { return device_attribute<cudaDevAttrMultiProcessorCount>(device); }
inline int cc_major(int device) { return device_attribute<cudaDevAttrComputeCapabilityMajor>(device); }

}  // namespace ferrum
