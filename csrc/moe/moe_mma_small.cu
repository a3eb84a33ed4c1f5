// Small-M tensor-core tier: block_m 16, block_n 128, 4 warps (1 x 4), 4 stages (72 KiB).
// Template arguments: <BM, BN, WARPS_M, WARPS_N, STAGES, MIN_BLOCKS>.
#include <cuda_runtime.h>

#include "moe/mma.cuh"

namespace ferrum::moe {

void launch_mma_small(const GemmArgs& args, bool gate_up, bool dtype_bf16, cudaStream_t stream) {
  launch_mma_tier<kSmallBlockM, 128, 1, 4, 4, 3>(args, gate_up, dtype_bf16, stream);
}

}  // namespace ferrum::moe
