// Instantiations of the GEMV tier (gate_up and down, fp16 and bf16).
#include <cuda_runtime.h>

#include "moe/gemv.cuh"
#include "common/pdl_launch.h"

namespace ferrum::moe {

namespace {
template <typename T, bool GATE_UP>
void launch(const GemmArgs& args, cudaStream_t stream) {
  // gate_up: 1 column (its gate and up rows) per warp, 8 loads per row in flight; down: 2 columns,
  // 4 loads per row (K = I is short). Small per-warp work keeps the grid's tail short.
  constexpr int ROWS = GATE_UP ? 1 : 2;
  constexpr int UNROLL = GATE_UP ? 8 : 4;
  const dim3 grid((args.n_out + kGemvWarps * ROWS - 1) / (kGemvWarps * ROWS), args.num_tiles);
  launch_pdl(moe_gemv_kernel<T, GATE_UP, ROWS, UNROLL>, grid, dim3(kGemvWarps * 32), 0, stream, args);
}
}  // namespace

void launch_gemv(const GemmArgs& args, bool gate_up, bool dtype_bf16, cudaStream_t stream) {
  if (args.num_tiles == 0) return;
  if (dtype_bf16) {
    gate_up ? launch<__nv_bfloat16, true>(args, stream) : launch<__nv_bfloat16, false>(args, stream);
  } else {
    gate_up ? launch<__half, true>(args, stream) : launch<__half, false>(args, stream);
  }
}

}  // namespace ferrum::moe
