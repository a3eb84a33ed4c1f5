// sm_90 bulk copies (cp.async.bulk, the TMA engine without a tensor map) into
// shared memory, completing on an mbarrier that counts the bytes. One thread
// issues a whole contiguous piece (a cache block of one head: 4 KiB at head_dim
// 128, block 16), so a stage costs a few instructions instead of one cp.async
// per 16 bytes per thread. Used by paged attention (cache blocks). The tensor
// form copies a box of a TMA tensor map (common/tensor_map.h) instead: strided
// rows, swizzled in shared memory. Empty below sm_90: callers keep another path there.
#pragma once

#include <cuda.h>

#include <cstdint>

#include "common/cache_policy.cuh"

namespace ferrum {

// Whether this compilation pass has the bulk copies (device code for sm_90+); kernels
// take their other load path where it is false (and in the host pass).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
constexpr bool kBulkArch = true;
#else
constexpr bool kBulkArch = false;
#endif

__device__ __forceinline__ void mbar_init(uint32_t bar, int count) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
#endif
}

// Makes the mbarrier initialisation visible to the async proxy (the bulk copies).
__device__ __forceinline__ void fence_mbar_init() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
#endif
}

// One arrival that also announces `bytes` more to come on the current phase.
__device__ __forceinline__ void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
#endif
}

// Blocks until the phase with the given parity has completed.
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile(
      "{\n"
      ".reg .pred done;\n"
      "WAIT_%=:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra WAIT_%=;\n"
      "}\n" ::"r"(bar),
      "r"(parity)
      : "memory");
#endif
}

// Orders this thread's earlier generic-proxy shared-memory accesses (and those
// it synchronised with) before its later bulk copies into the same buffer.
__device__ __forceinline__ void fence_proxy_async_smem() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

// bytes (a multiple of 16, both addresses 16-byte aligned) global -> shared;
// completion is counted on `bar`; `hint`: an optional L2 cache hint (common/cache_policy.cuh).
__device__ __forceinline__ void bulk_copy_g2s(uint32_t dst, const void* src, uint32_t bytes, uint32_t bar,
                                              L2Hint hint = {}) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (hint.on) {
    asm volatile(
        "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint [%0], [%1], %2, [%3], "
        "%4;\n" ::"r"(dst),
        "l"(src), "r"(bytes), "r"(bar), "l"(hint.policy)
        : "memory");
  } else {
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(
                     dst),
                 "l"(src), "r"(bytes), "r"(bar)
                 : "memory");
  }
#endif
}

// The box of a 3-D tensor map at element coordinates (c0, c1, c2) -> shared `dst`;
// completion is counted on `bar`; `hint` as above. `map` must live in parameter,
// constant or global memory (a __grid_constant__ kernel parameter).
__device__ __forceinline__ void tma_load_3d(uint32_t dst, const CUtensorMap* map, int c0, int c1, int c2,
                                            uint32_t bar, L2Hint hint = {}) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  const uint64_t desc = reinterpret_cast<uint64_t>(map);
  if (hint.on) {
    asm volatile(
        "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes.L2::cache_hint [%0], [%1, "
        "{%2, %3, %4}], [%5], %6;\n" ::"r"(dst),
        "l"(desc), "r"(c0), "r"(c1), "r"(c2), "r"(bar), "l"(hint.policy)
        : "memory");
  } else {
    asm volatile(
        "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4}], "
        "[%5];\n" ::"r"(dst),
        "l"(desc), "r"(c0), "r"(c1), "r"(c2), "r"(bar)
        : "memory");
  }
#endif
}

}  // namespace ferrum
