// Host-side helpers of moe_align shared by the moe_align op and fused_moe.
#pragma once

#include <cuda_runtime.h>
#include <cstdint>

namespace ferrum::moe {

// Buffer sizes of moe_align: they depend only on (T * k, E, block_m). Each expert's
// run is padded by at most block_m - 1 slots, and at most min(E, T * k) experts are hit.
int64_t align_max_padded(int64_t num_pairs, int64_t num_experts, int64_t block_m);
int64_t align_max_tiles(int64_t num_pairs, int64_t num_experts, int64_t block_m);

// int32 workspace launch_align needs for (T * k, E): 0 where the one-CTA kernel runs, else the
// multi-CTA kernels' per-CTA counts and per-expert offsets (route_align.cuh).
int64_t align_workspace_ints(int64_t num_pairs, int64_t num_experts);

// workspace: align_workspace_ints(num_pairs, num_experts) ints (may be null when that is 0).
void launch_align(const int* ids, int num_pairs, int num_experts, int block_m, int* sorted_ids,
                  int* block_expert, int* num_padded, int* workspace, cudaStream_t stream);

}  // namespace ferrum::moe
