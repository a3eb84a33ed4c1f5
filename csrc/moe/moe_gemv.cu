// Instantiations of the GEMV tier (gate_up and down, fp16 and bf16).
//
// moe_gemv_kernel (gemv.cuh) and moe_gemv_down_combine_kernel (gemv_down_combine.cuh): a grid of
// SMs x (resident CTAs per SM) CTAs, capped by the items (host values: graph-safe), each warp
// streaming its share of the items.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "moe/gemv.cuh"
#include "moe/gemv_down_combine.cuh"
#include "common/device_cache.h"
#include "common/pdl_launch.h"

namespace ferrum::moe {

namespace {

// Resident CTAs of kKernel per SM x SMs of the current device, cached per device and kernel (host
// queries only, no stream work). Where the occupancy query fails, kMinPerSm (the kernel's
// __launch_bounds__ minimum, which ptxas guarantees) per SM; 132 SMs where even the SM count fails.
template <auto kKernel, int kMinPerSm>
int resident_ctas() {
  int device = 0, sms = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      try_device_attribute<cudaDevAttrMultiProcessorCount>(device, &sms) != cudaSuccess) {
    (void)cudaGetLastError();  // leave no sticky error for the caller's launch check
    return 132 * kMinPerSm;
  }
  return sms * resident_blocks_per_sm<kKernel, kGemvWarps * 32>(kMinPerSm);
}

// One warp per item at most: a grid of resident CTAs (kMinPerSm is the kernel's __launch_bounds__
// minimum), fewer where the items do not need them all.
template <auto kKernel, int kMinPerSm, typename Args>
void launch_resident(const Args& args, int64_t items, cudaStream_t stream) {
  const int64_t needed = (items + kGemvWarps - 1) / kGemvWarps;
  const int ctas = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(resident_ctas<kKernel, kMinPerSm>(), needed)));
  launch_pdl(kKernel, dim3(ctas), dim3(kGemvWarps * 32), 0, stream, args);
}

template <typename T, bool GATE_UP>
void launch(const GemmArgs& args, cudaStream_t stream) {
  // gate_up: 1 column (its gate and up rows) per item, stages of 4 loads per row (K = H = 2048: 2
  // stages), 2 CTAs per SM; down: 2 columns per item, 3 loads per row (K = I = 768: one stage).
  // Registers: see gemv.cuh's napkin math and the build's resource usage.
  constexpr int ROWS = GATE_UP ? 1 : 2;
  constexpr int UNROLL = GATE_UP ? 4 : 3;
  constexpr int MIN_CTAS = 2;
  launch_resident<moe_gemv_kernel<T, GATE_UP, ROWS, UNROLL, MIN_CTAS>, MIN_CTAS>(
      args, static_cast<int64_t>(args.num_tiles) * (args.n_out / ROWS), stream);
}

template <typename T, int UNROLL, int BATCH>
void launch_down_combine(const DownCombineArgs& args, cudaStream_t stream) {
  launch_resident<moe_gemv_down_combine_kernel<T, UNROLL, BATCH>, 2>(
      args, static_cast<int64_t>(args.num_tokens) * args.hidden, stream);
}
}  // namespace

// A route's weight row is I elements: UNROLL 16-byte chunks per lane cover I <= 256 * UNROLL. Steps
// of BATCH routes, 3 KB per warp (2 x 1.5 KB at I = 768): with the next step's loads in flight during
// a step's FMAs, ~2100 resident warps keep >10 MB in flight; 4 routes per step spilled at the
// 128-register cap of 2 CTAs per SM.
bool launch_gemv_down_combine(const DownCombineArgs& args, bool dtype_bf16, cudaStream_t stream) {
  if (args.inter % 8 != 0 || args.inter > 1536) return false;
  if (args.num_tokens == 0) return true;
  const bool short_rows = args.inter <= 768;
  if (dtype_bf16) {
    short_rows ? launch_down_combine<__nv_bfloat16, 3, 2>(args, stream)
               : launch_down_combine<__nv_bfloat16, 6, 1>(args, stream);
  } else {
    short_rows ? launch_down_combine<__half, 3, 2>(args, stream) : launch_down_combine<__half, 6, 1>(args, stream);
  }
  return true;
}

void launch_gemv(const GemmArgs& args, bool gate_up, bool dtype_bf16, cudaStream_t stream) {
  if (args.num_tiles == 0) return;
  if (dtype_bf16) {
    gate_up ? launch<__nv_bfloat16, true>(args, stream) : launch<__nv_bfloat16, false>(args, stream);
  } else {
    gate_up ? launch<__half, true>(args, stream) : launch<__half, false>(args, stream);
  }
}

}  // namespace ferrum::moe
