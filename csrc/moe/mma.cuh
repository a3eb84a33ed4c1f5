// Tensor-core tiers of the grouped MoE GEMMs: mma.sync m16n8k16, fp32 accumulators.
//
// One CTA computes a BM x BN tile of out for one tile of moe_align (BM pairs of
// one expert; padding rows are zero-filled and never stored). BK = 64; A rows
// are gathered per pair (token row of hidden for gate_up, pair row of h for
// down), B = w[expert] rows (n, k contiguous: the "col" operand of mma.sync).
// STAGES-deep cp.async pipeline (weight rows with the L2's 256-byte prefetch size,
// cp_async16_l2_256); shared tiles are 128-byte rows swizzled by
// XOR of the 16-byte chunk with (row & 7), so ldmatrix and cp.async are free of
// bank conflicts.
//
// gate_up (w13 [E, 2I, H]): the CTA's BN weight rows are BN/2 gate rows and the
// matching BN/2 up rows, interleaved by 8 (gate n..n+7, up n..n+7, ...), so each
// thread holds gate and up accumulators of the same (row, column) in adjacent
// n-fragments and the epilogue writes h = silu(gate) * up directly. (A w13 stored
// interleaved, args.gate_up_interleaved, is read as BN contiguous rows.)
//
// FLOPs: 2 * T * k * 3 * H * I; Qwen3-30B-A3B at T = 4096: 2 * 32768 * 3 * 2048 * 768 = 309 GFLOP.
#pragma once

#include "common/types.cuh"
#include "moe/moe_common.cuh"
#include "common/pdl_launch.h"

namespace ferrum::moe {

template <int BM, int BN, int STAGES, typename T>
constexpr size_t mma_smem_bytes() {
  return static_cast<size_t>(STAGES) * (BM + BN) * 64 * sizeof(T) + BM * sizeof(int);
}

template <typename T, int BM, int BN, int WARPS_M, int WARPS_N, int STAGES, bool GATE_UP, int MIN_BLOCKS>
__global__ void __launch_bounds__(WARPS_M * WARPS_N * 32, MIN_BLOCKS) moe_mma_kernel(const GemmArgs args) {
  constexpr int BK = 64;
  constexpr int THREADS = WARPS_M * WARPS_N * 32;
  constexpr int WM = BM / WARPS_M, WN = BN / WARPS_N;
  constexpr int MI = WM / 16, NI = WN / 8;
  constexpr int A_ITERS = BM * 8 / THREADS, B_ITERS = BN * 8 / THREADS;
  static_assert(WM % 16 == 0 && WN % 16 == 0, "warp tile must be a multiple of 16 x 16");
  static_assert(A_ITERS >= 1 && (BM * 8) % THREADS == 0 && (BN * 8) % THREADS == 0, "load split");

  // PDL (common/pdl_launch.h): gate_up waits for moe_align at once. down reads the tile map (moe_align,
  // final once gate_up passed its wait) and starts its weight loads before waiting for h.
  if constexpr (GATE_UP) {
    pdl_wait();
    pdl_launch_dependents();
  }
  const int tile = blockIdx.y;
  const int expert = tile * BM < __ldg(args.num_padded) ? __ldg(args.block_expert + tile) : -1;
  if (expert < 0) {
    if constexpr (!GATE_UP) pdl_wait();  // every thread waits before it exits
    return;
  }

  extern __shared__ uint4 smem_raw[];
  T* sA = reinterpret_cast<T*>(smem_raw);
  T* sB = sA + STAGES * BM * BK;
  int* sRow = reinterpret_cast<int*>(sB + STAGES * BN * BK);

  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int nb = blockIdx.x;
  static_assert(BM <= THREADS, "one tile row per thread");
  const int row_pair = tid < BM ? __ldg(args.sorted_ids + tile * BM + tid) : args.num_pairs;
  if (tid < BM) sRow[tid] = row_pair;
  // A tile's pairs come first, its padding last (moe_align pads each expert's run at its end), so
  // the 16-row fragments of a warp past the tile's pairs are all padding: their ldmatrix and mma are
  // skipped (the tile height covers the worst case, the work follows the rows). Not in the 128-row
  // tile: chosen from 192 pairs per expert on, it rarely has such fragments, and at its 128-register
  // cap the predicates spill (3% slower at T = 4096).
  constexpr bool kSkipPadding = BM < 128;
  const int tile_rows = __syncthreads_count(row_pair < args.num_pairs);

  const T* a = static_cast<const T*>(args.a);
  const int n_w = GATE_UP ? 2 * args.n_out : args.n_out;
  const T* wexp = static_cast<const T*>(args.w) + static_cast<int64_t>(expert) * n_w * args.k;
  const int chunk = tid % 8;

  const T* a_src[A_ITERS];
  bool a_ok[A_ITERS];
  int a_off[A_ITERS];
#pragma unroll
  for (int i = 0; i < A_ITERS; ++i) {
    const int r = tid / 8 + i * (THREADS / 8);
    const int p = sRow[r];
    a_ok[i] = p < args.num_pairs;
    a_src[i] = a + (a_ok[i] ? p / args.a_row_div : 0) * args.a_stride + chunk * 8;
    a_off[i] = r * BK + ((chunk ^ (r & 7)) * 8);
  }
  const T* b_src[B_ITERS];
  bool b_ok[B_ITERS];
  int b_off[B_ITERS];
#pragma unroll
  for (int i = 0; i < B_ITERS; ++i) {
    const int r = tid / 8 + i * (THREADS / 8);
    int n;
    if constexpr (GATE_UP) {
      const int sub = r % 16;
      const int col = nb * (BN / 2) + (r / 16) * 8 + (sub & 7);
      n = sub < 8 ? gate_row(col, args.gate_up_interleaved) : up_row(col, args.n_out, args.gate_up_interleaved);
      b_ok[i] = col < args.n_out;
    } else {
      n = nb * BN + r;
      b_ok[i] = n < args.n_out;
    }
    b_src[i] = wexp + static_cast<int64_t>(b_ok[i] ? n : 0) * args.k + chunk * 8;
    b_off[i] = r * BK + ((chunk ^ (r & 7)) * 8);
  }

  const int num_kt = args.k / BK;
  auto load_a = [&](int stage, int kt) {
    T* dA = sA + stage * BM * BK;
#pragma unroll
    for (int i = 0; i < A_ITERS; ++i) cp_async16(dA + a_off[i], a_src[i] + kt * BK, a_ok[i]);
  };
  auto load_b = [&](int stage, int kt) {
    T* dB = sB + stage * BN * BK;
#pragma unroll
    for (int i = 0; i < B_ITERS; ++i) cp_async16_l2_256(dB + b_off[i], b_src[i] + kt * BK, b_ok[i]);
  };
  auto load_stage = [&](int stage, int kt) {
    load_a(stage, kt);
    load_b(stage, kt);
  };

  if constexpr (GATE_UP) {
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
      if (s < num_kt) load_stage(s, s);
      cp_async_commit();
    }
  } else {
    // Weights of the first stages before the wait (they overlap the gate_up GEMM's tail), h after.
    // Commit group s holds A of stage s (and group 0 all the early B), so waiting for group s
    // still covers stage s.
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
      if (s < num_kt) load_b(s, s);
    }
    pdl_wait();
    pdl_launch_dependents();
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
      if (s < num_kt) load_a(s, s);
      cp_async_commit();
    }
  }

  float acc[MI][NI][4];
#pragma unroll
  for (int mi = 0; mi < MI; ++mi)
#pragma unroll
    for (int ni = 0; ni < NI; ++ni)
#pragma unroll
      for (int q = 0; q < 4; ++q) acc[mi][ni][q] = 0.f;

  const int warp_m = warp % WARPS_M, warp_n = warp / WARPS_M;
  // Fragments of this warp holding a pair (warp-uniform).
  const int mi_live = kSkipPadding ? min(MI, max(0, (tile_rows - warp_m * WM + 15) / 16)) : MI;
  for (int kt = 0; kt < num_kt; ++kt) {
    cp_async_wait<STAGES - 2>();
    __syncthreads();
    // The stage refilled here was consumed in iteration kt - 1, which every thread has left.
    if (kt + STAGES - 1 < num_kt) load_stage((kt + STAGES - 1) % STAGES, kt + STAGES - 1);
    cp_async_commit();

    if (mi_live == 0) continue;  // the barrier above is the only one in the loop
    const T* As = sA + (kt % STAGES) * BM * BK;
    const T* Bs = sB + (kt % STAGES) * BN * BK;
#pragma unroll
    for (int kk = 0; kk < BK / 16; ++kk) {
      uint32_t af[MI][4];
#pragma unroll
      for (int mi = 0; mi < MI; ++mi) {
        if (mi >= mi_live) continue;
        const int row = warp_m * WM + mi * 16 + (lane % 16);
        const int ch = kk * 2 + lane / 16;
        ldmatrix_x4(af[mi], As + row * BK + ((ch ^ (row & 7)) * 8));
      }
      uint32_t bf[NI / 2][4];
#pragma unroll
      for (int nj = 0; nj < NI / 2; ++nj) {
        const int row = warp_n * WN + nj * 16 + (lane % 8) + (lane / 16) * 8;
        const int ch = kk * 2 + ((lane / 8) & 1);
        ldmatrix_x4(bf[nj], Bs + row * BK + ((ch ^ (row & 7)) * 8));
      }
#pragma unroll
      for (int mi = 0; mi < MI; ++mi) {
        if (mi >= mi_live) continue;
#pragma unroll
        for (int ni = 0; ni < NI; ++ni)
          mma_16816<T>(acc[mi][ni], af[mi], bf[ni / 2][(ni % 2) * 2], bf[ni / 2][(ni % 2) * 2 + 1]);
      }
    }
  }
  cp_async_wait<0>();

  T* out = static_cast<T*>(args.out);
#pragma unroll
  for (int mi = 0; mi < MI; ++mi) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = warp_m * WM + mi * 16 + lane / 4 + h * 8;
      const int p = sRow[r];
      if (p >= args.num_pairs) continue;
      T* orow = out + static_cast<int64_t>(p) * args.n_out;
      if constexpr (GATE_UP) {
#pragma unroll
        for (int ni = 0; ni < NI; ni += 2) {
          const int f = warp_n * WN / 8 + ni;  // even: gate fragment; f + 1: its up fragment
          const int col = nb * (BN / 2) + (f / 2) * 8 + 2 * (lane % 4);
          if (col >= args.n_out) continue;
          Packed<T, 2> v;
          v.v[0] = from_float<T>(silu_f(acc[mi][ni][2 * h]) * acc[mi][ni + 1][2 * h]);
          v.v[1] = from_float<T>(silu_f(acc[mi][ni][2 * h + 1]) * acc[mi][ni + 1][2 * h + 1]);
          store_packed(orow + col, v);
        }
      } else {
#pragma unroll
        for (int ni = 0; ni < NI; ++ni) {
          const int col = nb * BN + warp_n * WN + ni * 8 + 2 * (lane % 4);
          if (col >= args.n_out) continue;
          Packed<T, 2> v;
          v.v[0] = from_float<T>(acc[mi][ni][2 * h]);
          v.v[1] = from_float<T>(acc[mi][ni][2 * h + 1]);
          store_packed(orow + col, v);
        }
      }
    }
  }
}

// Launches one configuration; grid = (column blocks, tiles).
template <typename T, int BM, int BN, int WARPS_M, int WARPS_N, int STAGES, bool GATE_UP, int MIN_BLOCKS>
void launch_mma_config(const GemmArgs& args, cudaStream_t stream) {
  auto kernel = moe_mma_kernel<T, BM, BN, WARPS_M, WARPS_N, STAGES, GATE_UP, MIN_BLOCKS>;
  constexpr size_t smem = mma_smem_bytes<BM, BN, STAGES, T>();
  cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  const int cols_per_cta = GATE_UP ? BN / 2 : BN;
  const dim3 grid((args.n_out + cols_per_cta - 1) / cols_per_cta, args.num_tiles);
  launch_pdl(kernel, grid, dim3(WARPS_M * WARPS_N * 32), smem, stream, args);
}

// One tier (one tile configuration): the instantiation for the runtime dtype and GEMM; nothing
// when there is no tile. Each tier's .cu file instantiates its own, so the tiers build in parallel.
template <int BM, int BN, int WARPS_M, int WARPS_N, int STAGES, int MIN_BLOCKS>
void launch_mma_tier(const GemmArgs& args, bool gate_up, bool dtype_bf16, cudaStream_t stream) {
  if (args.num_tiles == 0) return;
  if (dtype_bf16) {
    gate_up ? launch_mma_config<__nv_bfloat16, BM, BN, WARPS_M, WARPS_N, STAGES, true, MIN_BLOCKS>(args, stream)
            : launch_mma_config<__nv_bfloat16, BM, BN, WARPS_M, WARPS_N, STAGES, false, MIN_BLOCKS>(args, stream);
  } else {
    gate_up ? launch_mma_config<__half, BM, BN, WARPS_M, WARPS_N, STAGES, true, MIN_BLOCKS>(args, stream)
            : launch_mma_config<__half, BM, BN, WARPS_M, WARPS_N, STAGES, false, MIN_BLOCKS>(args, stream);
  }
}

}  // namespace ferrum::moe
