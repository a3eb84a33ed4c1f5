// L2 cache policies (createpolicy, sm_80+) for loads that take a cache hint. Data read once
// (a decode step's KV cache, an expert's weights at small batch) is best loaded evict-first:
// it then replaces itself in L2 instead of evicting lines that other CTAs or later kernels
// still need, or dirty lines whose write-back would compete with the reads.
#pragma once

#include <cstdint>

namespace ferrum {

// Only the evict-first policy is made: loads that want the default priority take the
// instruction without a cache hint (a cp.async with an evict_normal policy trapped as an
// illegal instruction on the H100).
__device__ __forceinline__ uint64_t l2_evict_first_policy() {
  uint64_t policy = 0;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(policy));
#endif
  return policy;
}

}  // namespace ferrum
