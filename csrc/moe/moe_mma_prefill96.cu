// Prefill tensor-core tier, block_m 96: block_n 128, 8 warps (2 x 4), 4 stages (112 KB: two CTAs per SM).
// Template arguments: <BM, BN, WARPS_M, WARPS_N, STAGES, MIN_BLOCKS>.
#include <cuda_runtime.h>

#include "moe/mma.cuh"

namespace ferrum::moe {

void launch_mma_prefill96(const GemmArgs& args, bool gate_up, bool dtype_bf16, cudaStream_t stream) {
  launch_mma_tier<96, 128, 2, 4, 4, 2>(args, gate_up, dtype_bf16, stream);
}

}  // namespace ferrum::moe
