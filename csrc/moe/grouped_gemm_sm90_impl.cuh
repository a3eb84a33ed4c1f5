// CUTLASS 3.x grouped GEMM for Hopper (sm_90a), one group per expert; include from exactly one
// .cu file per element type (it instantiates the whole kernel: ~minutes of nvcc).
//
//   d[r, :] = a[r, :] @ w[e]^T  for offsets[e] <= r < offsets[e + 1]
//
// or, with kSiluMul (the gate_up GEMM over a gate/up-interleaved w13, silu_mul_epilogue_sm90.cuh),
// d[r, j] = silu(gate) * up of the two accumulators of output column j: d has n / 2 columns.
//
// A = expert-sorted activations [rows, k] (row-major, "RowMajor A"), B = w[e] [n, k] with k
// contiguous ("ColumnMajor B", the TN GEMM), D [rows, n] row-major, no C (ElementC = void),
// fp32 accumulators, D rounded once. Kernel: KernelPtrArrayTmaWarpSpecializedCooperative, tile
// 128 x 256 x 64, cluster 1x1x1, as many stages as fit: one producer warp issues TMA loads (the
// tensor maps of each group are rewritten on the device from its pointer, shape and stride),
// two consumer warpgroups run wgmma 64x256x16 on their halves of the tile, TMA-store epilogue
// (kSiluMul: stores from registers, no epilogue shared memory).
// Persistent: grid = SM count, tiles of all groups walked by a device-side scheduler that reads
// the group shapes from device memory (no host copy of the sizes, so the launch is graph-safe).
// Groups with 0 rows own 0 tiles. Rows past a group's end are zero-filled on load (TMA bounds of
// the group's own tensor map) and never stored.
//
// FLOPs per call: 2 * rows * n * k. Qwen3-30B-A3B at T = 4096 (rows = 32768): gate_up (n = 1536,
// k = 2048) 206 GFLOP, down (n = 2048, k = 768) 103 GFLOP. Bytes: each tile reads its A rows and
// w[e] columns once per (m-tile, n-tile) pair; weights 9.4 MB per expert.
#pragma once

// Device asserts inside CuTe (cute/pointer_flagged.hpp) add a call that makes ptxas serialise
// every wgmma (C7510); CUTLASS is meant to be built with NDEBUG
// (this header comes first in its .cu file, before any CUTLASS header).
#ifndef NDEBUG
#define NDEBUG
#endif
// CUTLASS 4.2 headers under -std=c++20: "implicit by-copy capture of this is deprecated" (sm100 builders).
#pragma nv_diag_suppress 2908

#include <cuda_runtime.h>

#include <cstdint>

#include "moe/grouped_gemm_sm90.h"

#if defined(FERRUM_SM90A_BUILT)
#include "moe/silu_mul_epilogue_sm90.cuh"
#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/epilogue/fusion/operations.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/dispatch_policy.hpp"
#include "cutlass/gemm/group_array_problem_shape.hpp"
#include "cutlass/gemm/kernel/gemm_universal.hpp"
#include "cutlass/kernel_hardware_info.h"

namespace ferrum::moe::sm90 {

template <typename Element, bool kSiluMul>
struct MoeGroupedGemm {
  using ElementAcc = float;
  static constexpr int kAlign = 16 / sizeof(Element);  // 16-byte TMA alignment, in elements
  using TileShape = cute::Shape<cute::_128, cute::_256, cute::_64>;
  using ClusterShape = cute::Shape<cute::_1, cute::_1, cute::_1>;
  using KernelSchedule = cutlass::gemm::KernelPtrArrayTmaWarpSpecializedCooperative;
  using EpilogueSchedule = cutlass::epilogue::PtrArrayTmaWarpSpecializedCooperative;
  using ProblemShape = cutlass::gemm::GroupProblemShape<cute::Shape<int, int, int>>;  // (M, N, K) per group

  using StoreEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, ElementAcc, ElementAcc,
      void, cutlass::layout::RowMajor*, kAlign,      // no C
      Element, cutlass::layout::RowMajor*, kAlign,   // D
      EpilogueSchedule,
      cutlass::epilogue::fusion::LinearCombination<Element, ElementAcc, void, ElementAcc>>::CollectiveOp;
  using CollectiveEpilogue = cute::conditional_t<
      kSiluMul, cutlass::epilogue::collective::detail::Sm90TmaWarpSpecializedAdapter<SiluMulEpilogueArray<Element>>,
      StoreEpilogue>;
  static constexpr int kDCols = kSiluMul ? 2 : 1;  // GEMM columns per column of d

  using CollectiveMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp,
      Element, cutlass::layout::RowMajor*, kAlign,     // A [rows, k]
      Element, cutlass::layout::ColumnMajor*, kAlign,  // B = w[e] [n, k], k contiguous
      ElementAcc, TileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(
          sizeof(typename CollectiveEpilogue::SharedStorage))>,
      KernelSchedule>::CollectiveOp;

  using GemmKernel = cutlass::gemm::kernel::GemmUniversal<ProblemShape, CollectiveMainloop, CollectiveEpilogue>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<GemmKernel>;

  using Shape3 = typename ProblemShape::UnderlyingProblemShape;
  using StrideA = typename GemmKernel::InternalStrideA;  // Stride<int64_t, _1, _0>: (row, 1, 0)
  using StrideB = typename GemmKernel::InternalStrideB;
  using StrideD = typename GemmKernel::InternalStrideD;
};

// Byte offsets of the argument arrays inside the caller's scratch, then the CUTLASS workspace.
struct ScratchLayout {
  size_t shapes, ptr_a, ptr_b, ptr_d, stride_a, stride_b, stride_d, workspace, total;
};

constexpr size_t kScratchAlign = 256;
inline size_t align_up(size_t x) { return (x + kScratchAlign - 1) / kScratchAlign * kScratchAlign; }

template <typename Cfg>
ScratchLayout scratch_layout(int num_experts, size_t workspace_bytes) {
  const size_t e = static_cast<size_t>(num_experts);
  ScratchLayout s{};
  size_t at = 0;
  auto take = [&](size_t bytes) {
    const size_t here = at;
    at = align_up(at + bytes);
    return here;
  };
  s.shapes = take(e * sizeof(typename Cfg::Shape3));
  s.ptr_a = take(e * sizeof(void*));
  s.ptr_b = take(e * sizeof(void*));
  s.ptr_d = take(e * sizeof(void*));
  s.stride_a = take(e * sizeof(typename Cfg::StrideA));
  s.stride_b = take(e * sizeof(typename Cfg::StrideB));
  s.stride_d = take(e * sizeof(typename Cfg::StrideD));
  s.workspace = take(workspace_bytes);
  s.total = at;
  return s;
}

// One thread per group: sizes, pointers and strides of group e from the row offsets.
template <typename Cfg, typename Element>
__global__ void moe_grouped_args_kernel(const Element* a, const Element* w, Element* d, const int* offsets,
                                        int num_experts, int n, int k, typename Cfg::Shape3* shapes,
                                        const Element** ptr_a, const Element** ptr_b, Element** ptr_d,
                                        typename Cfg::StrideA* stride_a, typename Cfg::StrideB* stride_b,
                                        typename Cfg::StrideD* stride_d) {
  for (int e = blockIdx.x * blockDim.x + threadIdx.x; e < num_experts; e += gridDim.x * blockDim.x) {
    const int begin = offsets[e];
    const int rows = offsets[e + 1] - begin;
    shapes[e] = typename Cfg::Shape3(rows, n, k);
    ptr_a[e] = a + static_cast<int64_t>(begin) * k;
    ptr_b[e] = w + static_cast<int64_t>(e) * n * k;
    const int64_t ldd = n / Cfg::kDCols;
    ptr_d[e] = d + begin * ldd;
    stride_a[e] = cute::make_stride(static_cast<int64_t>(k), cute::Int<1>{}, cute::Int<0>{});
    stride_b[e] = cute::make_stride(static_cast<int64_t>(k), cute::Int<1>{}, cute::Int<0>{});
    stride_d[e] = cute::make_stride(ldd, cute::Int<1>{}, cute::Int<0>{});
  }
}

template <typename Cfg, typename Element>
typename Cfg::Gemm::Arguments make_arguments(const GroupedGemmSm90Args& args, char* scratch,
                                             const ScratchLayout& s) {
  using Gemm = typename Cfg::Gemm;
  cutlass::KernelHardwareInfo hw_info;
  hw_info.device_id = args.device;
  hw_info.sm_count = args.sm_count;
  auto at = [&](size_t off) { return scratch == nullptr ? nullptr : scratch + off; };
  typename Gemm::Arguments arguments{
      cutlass::gemm::GemmUniversalMode::kGrouped,
      {args.num_experts, reinterpret_cast<typename Cfg::Shape3*>(at(s.shapes)), nullptr},
      {reinterpret_cast<const Element**>(at(s.ptr_a)), reinterpret_cast<typename Cfg::StrideA*>(at(s.stride_a)),
       reinterpret_cast<const Element**>(at(s.ptr_b)), reinterpret_cast<typename Cfg::StrideB*>(at(s.stride_b))},
      {},
      hw_info};
  if constexpr (Cfg::kDCols == 2) {
    arguments.epilogue.ptr_d = reinterpret_cast<Element**>(at(s.ptr_d));
    arguments.epilogue.ldd = args.n / 2;
  } else {
    arguments.epilogue = {{}, nullptr, nullptr, reinterpret_cast<Element**>(at(s.ptr_d)),
                          reinterpret_cast<typename Cfg::StrideD*>(at(s.stride_d))};
    auto& fusion = arguments.epilogue.thread;
    fusion.alpha = 1.f;
    fusion.beta = 0.f;
    fusion.alpha_ptr = nullptr;
    fusion.beta_ptr = nullptr;
    fusion.alpha_ptr_array = nullptr;
    fusion.beta_ptr_array = nullptr;
  }
  return arguments;
}

template <typename Element, bool kSiluMul>
size_t scratch_bytes(const GroupedGemmSm90Args& args) {
  using Cfg = MoeGroupedGemm<Element, kSiluMul>;
  const ScratchLayout probe = scratch_layout<Cfg>(args.num_experts, 0);
  const auto arguments = make_arguments<Cfg, Element>(args, nullptr, probe);
  const size_t workspace = Cfg::Gemm::get_workspace_size(arguments);
  return scratch_layout<Cfg>(args.num_experts, workspace).total;
}

template <typename Element, bool kSiluMul>
const char* run(const GroupedGemmSm90Args& args, void* scratch, size_t scratch_bytes_given, cudaStream_t stream) {
  using Cfg = MoeGroupedGemm<Element, kSiluMul>;
  using Gemm = typename Cfg::Gemm;
  if (args.silu_mul != kSiluMul) return "grouped_gemm_sm90: silu_mul does not match the instantiation";
  if (args.num_experts <= 0) return nullptr;
  if (args.n % Cfg::kAlign != 0 || args.k % Cfg::kAlign != 0) return "grouped_gemm_sm90: n and k must be multiples of 8";
  if (kSiluMul && args.n % 16 != 0) {
    return "grouped_gemm_sm90: silu_mul needs n a multiple of 16 (8-row gate/up blocks)";
  }
  const ScratchLayout probe = scratch_layout<Cfg>(args.num_experts, 0);
  const size_t workspace = Gemm::get_workspace_size(make_arguments<Cfg, Element>(args, nullptr, probe));
  const ScratchLayout s = scratch_layout<Cfg>(args.num_experts, workspace);
  if (scratch == nullptr || scratch_bytes_given < s.total) return "grouped_gemm_sm90: scratch too small";
  char* base = static_cast<char*>(scratch);

  const int threads = 128;
  const int blocks = (args.num_experts + threads - 1) / threads;
  moe_grouped_args_kernel<Cfg, Element><<<blocks, threads, 0, stream>>>(
      static_cast<const Element*>(args.a), static_cast<const Element*>(args.w), static_cast<Element*>(args.d),
      args.offsets, args.num_experts, args.n, args.k, reinterpret_cast<typename Cfg::Shape3*>(base + s.shapes),
      reinterpret_cast<const Element**>(base + s.ptr_a), reinterpret_cast<const Element**>(base + s.ptr_b),
      reinterpret_cast<Element**>(base + s.ptr_d), reinterpret_cast<typename Cfg::StrideA*>(base + s.stride_a),
      reinterpret_cast<typename Cfg::StrideB*>(base + s.stride_b),
      reinterpret_cast<typename Cfg::StrideD*>(base + s.stride_d));
  if (cudaPeekAtLastError() != cudaSuccess) return "grouped_gemm_sm90: argument kernel launch failed";

  const auto arguments = make_arguments<Cfg, Element>(args, base, s);
  Gemm gemm;
  if (gemm.can_implement(arguments) != cutlass::Status::kSuccess) {
    return "grouped_gemm_sm90: CUTLASS can_implement rejected the problem";
  }
  if (gemm.initialize(arguments, base + s.workspace, stream) != cutlass::Status::kSuccess) {
    return "grouped_gemm_sm90: CUTLASS initialize failed";
  }
  if (gemm.run(stream) != cutlass::Status::kSuccess) return "grouped_gemm_sm90: CUTLASS kernel launch failed";
  return nullptr;
}

}  // namespace ferrum::moe::sm90

#define FERRUM_MOE_SM90_DEFINE(SUFFIX, ELEMENT, SILU_MUL)                                                 \
  size_t grouped_gemm_sm90_scratch_bytes_##SUFFIX(const GroupedGemmSm90Args& args) {                    \
    return sm90::scratch_bytes<ELEMENT, SILU_MUL>(args);                                                \
  }                                                                                                     \
  const char* grouped_gemm_sm90_##SUFFIX(const GroupedGemmSm90Args& args, void* scratch, size_t bytes,  \
                                         cudaStream_t stream) {                                         \
    return sm90::run<ELEMENT, SILU_MUL>(args, scratch, bytes, stream);                                  \
  }

#else  // !FERRUM_SM90A_BUILT: stubs, so builds without sm_90a still link.

#define FERRUM_MOE_SM90_DEFINE(SUFFIX, ELEMENT, SILU_MUL)                                                 \
  size_t grouped_gemm_sm90_scratch_bytes_##SUFFIX(const GroupedGemmSm90Args&) { return 0; }             \
  const char* grouped_gemm_sm90_##SUFFIX(const GroupedGemmSm90Args&, void*, size_t, cudaStream_t) {     \
    return "grouped_gemm_sm90: the extension was built without sm_90a (TORCH_CUDA_ARCH_LIST lacks 9.0a)"; \
  }

#endif  // FERRUM_SM90A_BUILT
