// Instantiations of the GEMV tier (gate_up and down, fp16 and bf16).
//
// Both kernels (gemv.cuh) get a grid of SMs x (resident CTAs per SM) CTAs, capped by the items
// (num_tiles x column groups, host values: graph-safe). moe_gemv_bulk_kernel (bulk copies into a
// shared-memory ring) where its code was built for sm_90 and its ring fits; else moe_gemv_kernel.
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

#include "moe/gemv.cuh"
#include "common/pdl_launch.h"

namespace ferrum::moe {

namespace {

// Resident CTAs of `kernel` per SM x SMs of the current device, cached per device and kernel (host
// queries only, no stream work). Where the occupancy query fails, min_per_sm (the kernel's
// __launch_bounds__ minimum, which ptxas guarantees) per SM; 132 SMs where even the SM count fails.
template <typename Kernel>
int resident_ctas(Kernel kernel, int min_per_sm) {
  constexpr int kMaxDevices = 64;
  static std::atomic<int> cache[kMaxDevices] = {};
  int device = 0;
  const bool have_device = cudaGetDevice(&device) == cudaSuccess;
  const bool cached = have_device && device >= 0 && device < kMaxDevices;
  if (cached) {
    const int v = cache[device].load(std::memory_order_relaxed);
    if (v > 0) return v;
  }
  int sms = 0, per_sm = 0;
  if (!have_device || cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
    (void)cudaGetLastError();  // leave no sticky error for the caller's launch check
    return 132 * min_per_sm;
  }
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kGemvWarps * 32, 0) != cudaSuccess) {
    (void)cudaGetLastError();
    return sms * min_per_sm;  // not cached: asked again next time
  }
  const int v = sms * std::max(min_per_sm, per_sm);
  if (cached) cache[device].store(v, std::memory_order_relaxed);
  return v;
}

// Set true to force the register kernel (moe_gemv_kernel) everywhere.
constexpr bool kGemvRegisterOnly = false;
// Ring budget per CTA at 2 CTAs per SM (gemv.cuh napkin math); where fewer than 3 stages fit, the
// device's per-CTA maximum (1 CTA per SM).
constexpr int kGemvRingBudget = 96 * 1024;

// Per device: SM count and opt-in shared memory per CTA; whether the bulk kernel's code is sm_90
// (its PTX too: a JIT of older PTX would run the empty body); the max dynamic shared memory
// attribute set. Cached per device and kernel. Also the last (dynamic smem, CTAs per SM) query.
struct BulkDeviceInfo {
  std::atomic<int> state{0};  // 0 unknown, 1 usable, 2 not usable
  int sms = 0;
  int optin = 0;
  std::atomic<int64_t> occ{0};  // (smem << 16) | CTAs per SM
};

// Launches the bulk kernel; false (nothing launched) where it cannot run this shape on this device.
template <typename T, bool GATE_UP>
bool launch_bulk(const GemmArgs& args, cudaStream_t stream) {
  if (kGemvRegisterOnly) return false;
  constexpr int ROWS = GATE_UP ? 2 : 8;
  constexpr int WR = GATE_UP ? 2 * ROWS : ROWS;
  auto kernel = moe_gemv_bulk_kernel<T, GATE_UP, ROWS>;
  if (args.n_out % ROWS != 0 || args.k % 8 != 0 || (reinterpret_cast<uintptr_t>(args.w) & 15) != 0) return false;
  constexpr int kMaxDevices = 64;
  static BulkDeviceInfo info[kMaxDevices];
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= kMaxDevices) {
    (void)cudaGetLastError();
    return false;
  }
  BulkDeviceInfo& d = info[device];
  int state = d.state.load(std::memory_order_acquire);
  if (state == 0) {
    cudaFuncAttributes attr{};
    int sms = 0, optin = 0;
    bool ok = cudaFuncGetAttributes(&attr, kernel) == cudaSuccess && attr.ptxVersion >= 90 &&
              attr.binaryVersion >= 90 &&
              cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) == cudaSuccess &&
              cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) == cudaSuccess &&
              cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, optin) == cudaSuccess;
    if (!ok) (void)cudaGetLastError();  // leave no sticky error for the caller's launch check
    d.sms = sms;
    d.optin = optin;
    state = ok ? 1 : 2;
    d.state.store(state, std::memory_order_release);
  }
  if (state != 1) return false;

  const int stage_bytes = WR * args.k * static_cast<int>(sizeof(T));
  int nst = std::min(kGemvMaxStages, kGemvRingBudget / stage_bytes);
  if (nst < 3) nst = std::min(kGemvMaxStages, (d.optin - kGemvRingOffset) / stage_bytes);
  if (nst < 2) return false;
  const int smem = gemv_bulk_smem(nst, stage_bytes);
  int per_sm = 0;
  const int64_t occ = d.occ.load(std::memory_order_relaxed);
  if ((occ >> 16) == smem) {
    per_sm = static_cast<int>(occ & 0xffff);
  } else if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kGemvWarps * 32, smem) == cudaSuccess &&
             per_sm > 0) {
    d.occ.store((static_cast<int64_t>(smem) << 16) | per_sm, std::memory_order_relaxed);
  } else {
    (void)cudaGetLastError();
    per_sm = 1;
  }
  const int64_t items = static_cast<int64_t>(args.num_tiles) * (args.n_out / ROWS);
  const int ctas = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(static_cast<int64_t>(d.sms) * per_sm, items)));
  launch_pdl(kernel, dim3(ctas), dim3(kGemvWarps * 32), static_cast<size_t>(smem), stream, args, nst);
  return true;
}

template <typename T, bool GATE_UP>
void launch(const GemmArgs& args, cudaStream_t stream) {
  if (launch_bulk<T, GATE_UP>(args, stream)) return;
  // Register kernel. gate_up: 1 column (its gate and up rows) per item, stages of 4 loads per row
  // (K = H = 2048: 2 stages), 2 CTAs per SM; down: 2 columns per item, 3 loads per row (K = I = 768:
  // one stage).
  constexpr int ROWS = GATE_UP ? 1 : 2;
  constexpr int UNROLL = GATE_UP ? 4 : 3;
  constexpr int MIN_CTAS = 2;
  auto kernel = moe_gemv_kernel<T, GATE_UP, ROWS, UNROLL, MIN_CTAS>;
  const int64_t items = static_cast<int64_t>(args.num_tiles) * (args.n_out / ROWS);
  const int64_t needed = (items + kGemvWarps - 1) / kGemvWarps;
  const int ctas = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(resident_ctas(kernel, MIN_CTAS), needed)));
  launch_pdl(kernel, dim3(ctas), dim3(kGemvWarps * 32), 0, stream, args);
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
