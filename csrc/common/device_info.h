// Per-device attributes that launch plans depend on, queried once per device
// (host attribute queries: cheap after the first call and safe during graph capture).
// Throwing wrappers for the torch launchers over the torch-free cache of common/device_cache.h.
#pragma once

#include <c10/cuda/CUDAException.h>
#include <cuda_runtime.h>

#include <cstddef>

#include "common/device_cache.h"

namespace ferrum {

template <cudaDeviceAttr kAttr>
int device_attribute(int device) {
  int value = 0;
  C10_CUDA_CHECK(try_device_attribute<kAttr>(device, &value));
  return value;
}

inline int sm_count(int device) { return device_attribute<cudaDevAttrMultiProcessorCount>(device); }
inline int cc_major(int device) { return device_attribute<cudaDevAttrComputeCapabilityMajor>(device); }

// resident_blocks_per_sm (common/device_cache.h) of the current device, at least 1; a failed query raises.
template <auto kKernel, int kThreads, std::size_t kDynamicSmem = 0>
int resident_blocks(int fallback = 1) {
  cudaError_t err = cudaSuccess;
  const int n = resident_blocks_per_sm<kKernel, kThreads, kDynamicSmem>(fallback, &err);
  C10_CUDA_CHECK(err);
  return n;
}

}  // namespace ferrum
