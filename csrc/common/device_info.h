// Per-device attributes that launch plans depend on, queried once per device
// (host attribute queries: cheap after the first call and safe during graph capture).
// Throwing wrappers for the torch launchers over the torch-free cache of common/device_cache.h.
#pragma once

#include <c10/cuda/CUDAException.h>
#include <cuda_runtime.h>

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

}  // namespace ferrum
