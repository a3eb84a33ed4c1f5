// Programmatic dependent launch (sm_90+), device side. pdl_wait: block until the grid this one was
// launched after (with cudaLaunchAttributeProgrammaticStreamSerialization, common/pdl_launch.h) has
// completed and its writes are visible; pdl_launch_dependents: let the next such grid be scheduled
// now. Both are no-ops without the attribute and below sm_90 (plain stream order holds there).
#pragma once

namespace ferrum {

__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

}  // namespace ferrum
