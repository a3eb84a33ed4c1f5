// Host queries that launch plans depend on, cached per device (torch-free; host calls only, no stream
// work, so safe during CUDA-graph capture): device attributes, and resident CTAs per SM of a kernel.
// common/device_info.h wraps the attribute query in throwing helpers (sm_count, cc_major) for the
// torch launchers; torch-free headers (pdl_launch.h) and .cu files use these directly.
//
// Every cache is an array of relaxed atomic ints, one per device index (< kMaxCachedDevices; other
// indices are queried every time, never cached), 0 meaning "not known yet". A value only depends on
// the device (and, for occupancy, on the kernel and launch shape fixed by the cache's instantiation),
// so threads racing on a miss all store the same value, and no ordering with other memory is needed.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstddef>

namespace ferrum {

inline constexpr int kMaxCachedDevices = 64;

namespace detail {

// One int per device index, 0 = unknown. Zero-initialised (constant initialisation: no guard).
struct PerDeviceInt {
  std::atomic<int> slot[kMaxCachedDevices] = {};

  static bool cacheable(int device) { return device >= 0 && device < kMaxCachedDevices; }
  int load(int device) const { return cacheable(device) ? slot[device].load(std::memory_order_relaxed) : 0; }
  void store(int device, int value) {
    if (cacheable(device)) slot[device].store(value, std::memory_order_relaxed);
  }
};

}  // namespace detail

// cudaDeviceGetAttribute(kAttr, device), cached per device once positive (a 0 is asked again next
// time). On failure returns the error with *value untouched, and like any runtime call leaves it in
// cudaGetLastError: the caller clears it or reports it.
template <cudaDeviceAttr kAttr>
cudaError_t try_device_attribute(int device, int* value) {
  static detail::PerDeviceInt cache;
  const int cached = cache.load(device);
  if (cached > 0) {
    *value = cached;
    return cudaSuccess;
  }
  int v = 0;
  const cudaError_t err = cudaDeviceGetAttribute(&v, kAttr, device);
  if (err != cudaSuccess) return err;
  cache.store(device, v);
  *value = v;
  return cudaSuccess;
}

// CTAs of kKernel resident per SM of the current device when launched with kThreads threads and
// kDynamicSmem bytes of dynamic shared memory, but at least `fallback` (the kernel's
// __launch_bounds__ minimum, or 1). Cached per device and per (kernel, kThreads, kDynamicSmem). The
// device is the current one, which is also the one the occupancy query answers for (launchers hold
// a device guard of their tensors' device).
//
// Why the cache is right: the result depends on exactly the kernel, the block size, the dynamic
// shared memory and the device. The first three are the template arguments, so each combination is
// its own instantiation with its own function-local static; two different kernels are two different
// pointer values, hence two instantiations, even when their types are equal (a cache keyed on the
// kernel's *type*, or a static in a template over it, would be shared by every kernel of one
// signature). The device is the index into that static. Without -rdc nvcc gives kernel stubs
// internal linkage, so the instantiation (and its cache) is private to the kernel's translation
// unit, as is the CUfunction whose attribute it sets.
//
// With kDynamicSmem > 0, a miss first raises the kernel's cudaFuncAttributeMaxDynamicSharedMemorySize
// to kDynamicSmem on this device (needed above 48 KiB, and counted by the occupancy query); launches
// of such a kernel may rely on this having happened once per device, before their first launch.
//
// Where a query fails: returns `fallback`, not cached (asked again next time), the error cleared
// from cudaGetLastError (no sticky error for the caller's launch check), and stored in *error if
// given (a caller that prefers to raise does C10_CUDA_CHECK(*error)).
template <auto kKernel, int kThreads, std::size_t kDynamicSmem = 0>
int resident_blocks_per_sm(int fallback, cudaError_t* error = nullptr) {
  static detail::PerDeviceInt cache;
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) {
    const int cached = cache.load(device);
    if (cached > 0) return cached;
    if constexpr (kDynamicSmem > 0) {
      err = cudaFuncSetAttribute(kKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(kDynamicSmem));
    }
  }
  int n = 0;
  if (err == cudaSuccess) err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kKernel, kThreads, kDynamicSmem);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    if (error != nullptr) *error = err;
    return fallback;
  }
  n = std::max(n, fallback);
  cache.store(device, n);
  return n;
}

}  // namespace ferrum
