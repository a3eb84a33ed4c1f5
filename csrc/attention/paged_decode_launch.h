// Host-side entry points of the decode-v2 kernel (paged_decode.cuh), explicitly
// instantiated per dtype in paged_decode_{f16,bf16}.cu. Torch-free apart from the stream type.
#pragma once

#include <cuda_runtime.h>

namespace ferrum::attn {

struct AttnParams;

// Launches decode::paged_decode_kernel<T, D, VLLM> on rows x splits x kv_heads CTAs (1-D grid)
// and, when p.num_splits > 1, decode::merge_kernel<T, D> on (rows, heads) with
// programmatic dependent launch; p.mode kTileDecode or kTileRow.
template <typename T, int D, bool VLLM>
void launch_decode_v2(const AttnParams& p, int num_rows, cudaStream_t stream);

// CTAs of that kernel resident per SM (cached per device; raises the smem limit on first use).
template <typename T, int D, bool VLLM>
int decode_v2_ctas_per_sm(int device);

}  // namespace ferrum::attn
