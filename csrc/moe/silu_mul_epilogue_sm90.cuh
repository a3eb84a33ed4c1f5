// CUTLASS collective epilogue of the Hopper gate_up GEMM: h = silu(gate) * up straight from the
// wgmma accumulators (no shared memory, no separate pass over a [rows, 2I] intermediate).
//
// The GEMM's B rows (w13[e], its N columns) are interleaved by 8 (interleave_gate_up): columns
// 16g .. 16g+7 are the gate rows 8g .. 8g+7 and columns 16g+8 .. 16g+15 the matching up rows. A
// thread's wgmma accumulators of a 64 x N warpgroup tile are, per 8-column block b, the values
// (row r, col 2q), (r, 2q+1), (r+8, 2q), (r+8, 2q+1) at fragment index c + 2 * rr + 4 * b (the value
// mode is (2, 2, N/8)); so gate block 2j and its up block 2j+1 sit 4 values apart in the same thread
// and h[r, 8j + 2q + c] = silu(acc[i]) * acc[i + 4] needs no data exchange. Each thread stores two
// adjacent outputs (4 bytes) per row and block pair; a quad of lanes covers 16 contiguous bytes.
//
// Plugs into KernelPtrArrayTmaWarpSpecializedCooperative through CUTLASS's
// Sm90TmaWarpSpecializedAdapter (the wrapper of its own no-shared-memory epilogues): D of group l
// at ptr_d[l], ldd elements between rows, N / 2 columns; rows past the group's M are not stored.
#pragma once

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/epilogue/collective/detail.hpp"
#include "cutlass/epilogue/dispatch_policy.hpp"
#include "moe/moe_common.cuh"

namespace ferrum::moe::sm90 {

template <typename Element>
class SiluMulEpilogueArray {
 public:
  using EpilogueSchedule = cutlass::epilogue::PtrArrayNoSmemWarpSpecialized;
  using DispatchPolicy = EpilogueSchedule;
  using ThreadEpilogueOp = void;
  using ElementAccumulator = float;
  using ElementC = void;  // no source operand
  using InternalStrideC = cute::Stride<int64_t, cute::_1, cute::_0>;
  using StrideC = InternalStrideC*;
  using ElementD = Element;
  using InternalStrideD = InternalStrideC;
  using StrideD = InternalStrideD*;

  struct SharedStorage {};
  using TensorMapStorage = SharedStorage;

  struct Arguments {
    Element** ptr_d = nullptr;  // [groups], device
    int64_t ldd = 0;            // elements between rows of every group's D
  };
  using Params = Arguments;

  template <class ProblemShape>
  static constexpr Params to_underlying_arguments(ProblemShape const&, Arguments const& args, void*) {
    return args;
  }
  template <class ProblemShape>
  static size_t get_workspace_size(ProblemShape const&, Arguments const&, int) {
    return 0;
  }
  template <class ProblemShape>
  static cutlass::Status initialize_workspace(ProblemShape const&, Arguments const&, void*, cudaStream_t,
                                              cutlass::CudaHostAdapter* = nullptr) {
    return cutlass::Status::kSuccess;
  }
  template <class ProblemShape>
  static bool can_implement(ProblemShape const&, Arguments const& args) {
    return args.ldd % 2 == 0;  // 4-byte stores of output pairs
  }

  CUTLASS_HOST_DEVICE explicit SiluMulEpilogueArray(Params const& params) : params_(params) {}

  CUTLASS_DEVICE bool is_source_needed() { return false; }

  template <class ProblemShapeMNKL, class BlockShapeMNK, class BlockCoordMNKL, class FrgEngine, class FrgLayout,
            class TiledMma, class ResidueMNK>
  CUTLASS_DEVICE void operator()(ProblemShapeMNKL problem_shape_mnkl, BlockShapeMNK blk_shape_mnk,
                                 BlockCoordMNKL blk_coord_mnkl, cute::Tensor<FrgEngine, FrgLayout> const& accumulators,
                                 TiledMma tiled_mma, ResidueMNK, int thread_idx, char*) {
    using namespace cute;
    static_assert(is_static<FrgLayout>::value, "accumulator layout must be static");
    static_assert(decltype(size<0, 0>(FrgLayout{}))::value == 2 && decltype(size<0, 1>(FrgLayout{}))::value == 2,
                  "expected the wgmma accumulator value mode (2 columns, 2 rows, N / 8 blocks)");
    static_assert(decltype(size(FrgLayout{}))::value % 8 == 0, "gate and up 8-column blocks come in pairs");
    const int m_size = get<0>(problem_shape_mnkl);
    const int n_size = get<1>(problem_shape_mnkl);
    const auto m_coord = get<0>(blk_coord_mnkl);
    const auto n_coord = get<1>(blk_coord_mnkl);
    const auto l_coord = get<3>(blk_coord_mnkl);

    // (m, n) of every accumulator value of this thread, in the group's GEMM coordinates.
    Tensor tile_coords = local_tile(make_identity_tensor(make_shape(m_size, n_size)), take<0, 2>(blk_shape_mnk),
                                    make_coord(m_coord, n_coord));
    Tensor thr_coords = tiled_mma.get_thread_slice(thread_idx).partition_C(tile_coords);

    Element* d = params_.ptr_d[l_coord];
    CUTLASS_PRAGMA_UNROLL
    for (int b = 0; b < size(accumulators) / 8; ++b) {
      CUTLASS_PRAGMA_UNROLL
      for (int rr = 0; rr < 2; ++rr) {
        const int i = 8 * b + 2 * rr;  // gate values i, i + 1; up values i + 4, i + 5
        const auto mn = thr_coords(i);
        const int m = get<0>(mn), n = get<1>(mn);
        if (m < m_size && n < n_size) {
          cutlass::AlignedArray<Element, 2> pair;
          pair[0] = Element(silu_f(accumulators(i)) * accumulators(i + 4));
          pair[1] = Element(silu_f(accumulators(i + 1)) * accumulators(i + 5));
          const int col = (n >> 4) * 8 + (n & 7);
          *reinterpret_cast<cutlass::AlignedArray<Element, 2>*>(d + static_cast<int64_t>(m) * params_.ldd + col) = pair;
        }
      }
    }
  }

 private:
  Params params_;
};

}  // namespace ferrum::moe::sm90
