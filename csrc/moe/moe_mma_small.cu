// Small-M tensor-core tier: block_m 16, block_n 128, 4 warps (1 x 4), 4 stages (72 KiB).
#include <cuda_runtime.h>

#include "moe/mma.cuh"

namespace ferrum::moe {

template <typename T, bool G>
static void run(const GemmArgs& args, cudaStream_t stream) {
  launch_mma_config<T, kSmallBlockM, 128, 1, 4, 4, G, 3>(args, stream);
}

void launch_mma_small(const GemmArgs& args, bool gate_up, bool dtype_bf16, cudaStream_t stream) {
  if (args.num_tiles == 0) return;
  if (dtype_bf16) {
    gate_up ? run<__nv_bfloat16, true>(args, stream) : run<__nv_bfloat16, false>(args, stream);
  } else {
    gate_up ? run<__half, true>(args, stream) : run<__half, false>(args, stream);
  }
}

}  // namespace ferrum::moe
