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

#include <atomic>
#include <utility>

namespace ferrum {

// Whether the current device is sm_90+ (cached per device: host attribute queries only).
// Building with -DFERRUM_DISABLE_PDL (e.g. NVCC_APPEND_FLAGS=-DFERRUM_DISABLE_PDL) turns every such
// launch into a plain launch: an A/B switch for timing and a fallback; results are identical.
inline bool pdl_supported() {
#ifdef FERRUM_DISABLE_PDL
  return false;
#endif
  constexpr int kMaxDevices = 64;
  static std::atomic<int> cache[kMaxDevices] = {};  // 0 unknown, 1 no, 2 yes
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return false;
  if (device >= 0 && device < kMaxDevices) {
    const int v = cache[device].load(std::memory_order_relaxed);
    if (v != 0) return v == 2;
  }
  int major = 0;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess) return false;
  if (device >= 0 && device < kMaxDevices) cache[device].store(major >= 9 ? 2 : 1, std::memory_order_relaxed);
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
