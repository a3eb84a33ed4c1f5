// Host-side entry points of the chunked-prefill kernel (paged_prefill.cuh),
// explicitly instantiated per dtype in paged_prefill_{f16,bf16}.cu. Torch-free
// apart from the stream type.
#pragma once

#include <cuda_runtime.h>

namespace ferrum::attn::prefill {

struct PrefillParams;

// Launches paged_prefill_kernel<T, D, KV> (KV from p.vllm_layout / p.nhd_tma) on grid
// (num_tiles, kv_heads); raises the kernels' dynamic shared-memory limit on first use
// per device.
template <typename T, int D>
void launch_prefill(const PrefillParams& p, int num_tiles, cudaStream_t stream);

}  // namespace ferrum::attn::prefill
