// Instantiations of the GEMV tier (gate_up and down, fp16 and bf16).
//
// moe_gemv_kernel (gemv.cuh): a grid of SMs x (resident CTAs per SM) CTAs, capped by the items
// (num_tiles x column groups, host values: graph-safe), each warp streaming its share of the items.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "moe/gemv.cuh"
#include "common/device_cache.h"
#include "common/pdl_launch.h"

namespace ferrum::moe {

namespace {

// Resident CTAs of kKernel per SM x SMs of the current device, cached per device and kernel (host
// queries only, no stream work; the first call also raises the kernel's dynamic shared-memory limit).
// Where the occupancy query fails, one CTA per SM (what the launch bounds and the ring's size
// allow); 132 SMs where even the SM count fails.
template <auto kKernel, int kSmemBytes>
int resident_ctas() {
  int device = 0, sms = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      try_device_attribute<cudaDevAttrMultiProcessorCount>(device, &sms) != cudaSuccess) {
    (void)cudaGetLastError();  // leave no sticky error for the caller's launch check
    return 132;
  }
  return sms * resident_blocks_per_sm<kKernel, kGemvWarps * 32, kSmemBytes>(1);
}

// gate_up: 1 column (its gate and up rows) per item, stages of 4 chunks per lane and row (K = H =
// 2048: 2 stages of 4 KiB); down: 2 columns per item, 3 chunks per row (K = I = 768: one 3 KiB
// stage). The ring holds SLOTS stages per warp (gemv.cuh's napkin math).
template <bool GATE_UP>
struct GemvShape {
  static constexpr int kRows = GATE_UP ? 1 : 2;
  static constexpr int kUnroll = GATE_UP ? 4 : 3;
  static constexpr int kDeepSlots = GATE_UP ? 6 : 8;  // 192 KiB per CTA: one CTA per SM (sm_90)
  static constexpr int kShallowSlots = 3;             // 96 / 72 KiB: fits GPUs with 99 KiB per CTA
};

template <typename T, bool GATE_UP, int SLOTS>
void launch_ring(const GemmArgs& args, cudaStream_t stream) {
  using S = GemvShape<GATE_UP>;
  constexpr int kSmem = gemv_smem_bytes<GATE_UP, S::kRows, S::kUnroll, SLOTS>();
  constexpr auto kernel = moe_gemv_kernel<T, GATE_UP, S::kRows, S::kUnroll, SLOTS>;
  const int64_t items = static_cast<int64_t>(args.num_tiles) * (args.n_out / S::kRows);
  const int64_t needed = (items + kGemvWarps - 1) / kGemvWarps;
  const int ctas = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(resident_ctas<kernel, kSmem>(), needed)));
  launch_pdl(kernel, dim3(ctas), dim3(kGemvWarps * 32), kSmem, stream, args);
}

// The deep ring where the device grants a CTA its shared memory, else the shallow one.
template <typename T, bool GATE_UP>
void launch(const GemmArgs& args, cudaStream_t stream) {
  using S = GemvShape<GATE_UP>;
  int device = 0, optin = 0;
  const bool deep = cudaGetDevice(&device) == cudaSuccess &&
                    try_device_attribute<cudaDevAttrMaxSharedMemoryPerBlockOptin>(device, &optin) == cudaSuccess &&
                    optin >= gemv_smem_bytes<GATE_UP, S::kRows, S::kUnroll, S::kDeepSlots>();
  (void)cudaGetLastError();  // a failed query leaves no sticky error: the shallow ring is launched
  if (deep) {
    launch_ring<T, GATE_UP, S::kDeepSlots>(args, stream);
  } else {
    launch_ring<T, GATE_UP, S::kShallowSlots>(args, stream);
  }
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
