// Prefill tensor-core tier, block_m 128: block_n 128, 8 warps (2 x 4), 3 stages.
// Template arguments: <BM, BN, WARPS_M, WARPS_N, STAGES, MIN_BLOCKS>.
#include <cuda_runtime.h>

#include "moe/mma.cuh"

namespace ferrum::moe {

void launch_mma_prefill128(const GemmArgs& args, bool gate_up, bool dtype_bf16, cudaStream_t stream) {
  launch_mma_tier<128, 128, 2, 4, 3, 2>(args, gate_up, dtype_bf16, stream);
}

}  // namespace ferrum::moe
