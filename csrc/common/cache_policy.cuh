// L2 cache policies (createpolicy, sm_80+) for loads that take a cache hint. Data read once
// (a decode step's KV cache) may be loaded evict-first: it then replaces itself in L2 instead
// of evicting lines that other CTAs or later kernels still need, or dirty lines whose
// write-back would compete with the reads. Measured, not assumed: it paid for small decodes
// and cost large ones and the MoE weight streams (paged_attention.cuh, docs/attention.md).
#pragma once

#include <cstdint>

namespace ferrum {

// Only the evict-first policy is made: loads that want the default priority take the
// instruction without a cache hint. (In a trial, cp.async in the MoE mma tier carrying an
// evict_normal policy raised an illegal-instruction error on the H100; not pursued.)
__device__ __forceinline__ uint64_t l2_evict_first_policy() {
  uint64_t policy = 0;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(policy));
#endif
  return policy;
}

// An optional L2 cache hint for the copies of common/bulk_copy.cuh (off: the unhinted form).
struct L2Hint {
  bool on = false;
  uint64_t policy = 0;
};

__device__ __forceinline__ L2Hint l2_evict_first_if(bool on) {
  return L2Hint{on, on ? l2_evict_first_policy() : uint64_t{0}};
}

}  // namespace ferrum
