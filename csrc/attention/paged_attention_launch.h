// Host-side entry points of the paged-attention kernels, explicitly
// instantiated per dtype in paged_attention_{f16,bf16}.cu (one family per file
// so the build parallelises). Torch-free apart from the stream type.
#pragma once

#include <cuda_runtime.h>

namespace ferrum::attn {

struct AttnParams;

// Launches paged_attention_kernel<T, D, MT, p.vllm_layout> on grid (tiles, splits, kv_heads).
template <typename T, int D, int MT>
void launch_attention(const AttnParams& p, int num_tiles, cudaStream_t stream);

// CTAs of that kernel (for the given cache layout) resident per SM of the current
// device (cached per device; also raises the dynamic shared-memory limit on first use).
template <typename T, int D, int MT>
int attention_ctas_per_sm(bool vllm_layout);

// Launches merge_splits_kernel<T, D> on grid (rows, heads).
template <typename T, int D>
void launch_merge(const AttnParams& p, int num_rows, cudaStream_t stream);

}  // namespace ferrum::attn
