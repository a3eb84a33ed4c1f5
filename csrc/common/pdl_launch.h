// Host-side launch with programmatic dependent launch (PDL) on sm_90+: the kernel may be scheduled
// while the previous kernel of the stream still runs (once every CTA of that kernel has executed
// griddepcontrol.launch_dependents, or exited), and must griddepcontrol.wait (pdl_wait in
// common/pdl.cuh) before it reads that kernel's outputs or writes anything. Below sm_90 it is a
// plain launch. Torch-free: a failed launch is left in cudaGetLastError for the caller's
// C10_CUDA_KERNEL_LAUNCH_CHECK.
//
// Contract of the kernels launched this way: every thread calls pdl_wait before its first global
// write and before it exits, and calls pdl_launch_dependents only after its pdl_wait. Then a kernel's
// completion still implies its predecessor's, and a kernel may read, before its own wait, anything
// that was final before its predecessor passed its wait (outputs of the kernel two launches back).
#pragma once

#include <cuda_runtime.h>

#include <utility>

#include "common/device_cache.h"

namespace ferrum {

// Whether the current device is sm_90+ (cached per device: host attribute queries only). Where a
// query fails: false (a plain launch), the error left for the caller's launch check.
// Building with -DFERRUM_DISABLE_PDL (e.g. NVCC_APPEND_FLAGS=-DFERRUM_DISABLE_PDL) turns every such
// launch into a plain launch: an A/B switch for timing and a fallback; results are identical.
inline bool pdl_supported() {
#ifdef FERRUM_DISABLE_PDL
  return false;
#endif
  int device = 0, major = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return false;
  if (try_device_attribute<cudaDevAttrComputeCapabilityMajor>(device, &major) != cudaSuccess) return false;
  return major >= 9;
}

template <typename... Params, typename... Args>
void launch_pdl(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                Args&&... args) {
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  config.attrs = attr;
  config.numAttrs = pdl_supported() ? 1 : 0;
  (void)cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);  // error: see cudaGetLastError
}

}  // namespace ferrum
