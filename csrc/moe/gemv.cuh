// Weight-streaming GEMV tier of the grouped MoE GEMMs (a handful of tokens).
//
// Tiles of kGemvBlockM (4) pairs of one expert, from moe_align. CTA = 8 warps;
// grid = (n_out / (8 * ROWS), tiles). Each warp owns ROWS output columns and
// streams their weight rows (2 * ROWS for gate_up: the gate and the up row of
// each column) once, 16 bytes per lane per load, UNROLL loads per row in
// flight, dotting each chunk with the tile's (at most 4) activation rows, which
// every warp of the CTA reads through L1. Warp-shuffle reduction, then the
// SiLU(gate) * up epilogue (gate_up) and one store per column and pair.
//
// Napkin math, Qwen3-30B-A3B at T = 1 (8 experts, H 2048, I 768, bf16):
// 8 * 3 * 2048 * 768 * 2 B = 75.5 MB of weights -> 25 us at 3.0 TB/s; FLOPs are
// negligible (2 per weight element and token).
#pragma once

#include "common/types.cuh"
#include "moe/moe_common.cuh"

namespace ferrum::moe {

template <typename T>
__device__ __forceinline__ float dot8(const Vec16<T>& x, const Vec16<T>& w, float acc) {
#pragma unroll
  for (int i = 0; i < 8; ++i) acc = fmaf(to_float(x.v[i]), to_float(w.v[i]), acc);
  return acc;
}

constexpr int kGemvWarps = 8;

template <typename T, bool GATE_UP, int ROWS, int UNROLL>
__global__ void __launch_bounds__(kGemvWarps * 32) moe_gemv_kernel(const GemmArgs args) {
  constexpr int M = kGemvBlockM;
  constexpr int WR = GATE_UP ? 2 * ROWS : ROWS;  // weight rows per warp
  pdl_wait();  // tiles from moe_align, activations from the previous GEMM (PDL launch, pdl_launch.h)
  pdl_launch_dependents();
  const int tile = blockIdx.y;
  if (tile * M >= __ldg(args.num_padded)) return;
  const int expert = __ldg(args.block_expert + tile);
  if (expert < 0) return;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int n0 = (blockIdx.x * kGemvWarps + warp) * ROWS;
  if (n0 >= args.n_out) return;

  const T* a = static_cast<const T*>(args.a);
  int pair[M];
  bool valid[M];
  const T* xrow[M];
#pragma unroll
  for (int m = 0; m < M; ++m) {
    pair[m] = __ldg(args.sorted_ids + tile * M + m);
    valid[m] = pair[m] < args.num_pairs;
    xrow[m] = a + (valid[m] ? pair[m] / args.a_row_div : 0) * args.a_stride;
  }
  const int n_w = GATE_UP ? 2 * args.n_out : args.n_out;
  const T* wexp = static_cast<const T*>(args.w) + static_cast<int64_t>(expert) * n_w * args.k;
  const T* wrow[WR];
#pragma unroll
  for (int r = 0; r < WR; ++r) {
    const int n = (GATE_UP && r >= ROWS) ? args.n_out + n0 + (r - ROWS) : n0 + r;
    wrow[r] = wexp + static_cast<int64_t>(n) * args.k;
  }

  float acc[M][WR];
#pragma unroll
  for (int m = 0; m < M; ++m)
#pragma unroll
    for (int r = 0; r < WR; ++r) acc[m][r] = 0.f;

  const int chunks = args.k / 8;  // 16-byte chunks per row
  for (int c0 = 0; c0 < chunks; c0 += 32 * UNROLL) {
    Vec16<T> wv[UNROLL][WR];
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      const int c = c0 + u * 32 + lane;
#pragma unroll
      for (int r = 0; r < WR; ++r) {
        if (c < chunks) {
          wv[u][r] = load_vec16_stream(wrow[r] + c * 8);
        } else {
          *reinterpret_cast<uint4*>(&wv[u][r]) = make_uint4(0, 0, 0, 0);
        }
      }
    }
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      const int c = c0 + u * 32 + lane;
      if (c >= chunks) continue;
#pragma unroll
      for (int m = 0; m < M; ++m) {
        if (!valid[m]) continue;
        Vec16<T> xv;
        *reinterpret_cast<uint4*>(&xv) = __ldg(reinterpret_cast<const uint4*>(xrow[m] + c * 8));
#pragma unroll
        for (int r = 0; r < WR; ++r) acc[m][r] = dot8(xv, wv[u][r], acc[m][r]);
      }
    }
  }

#pragma unroll
  for (int m = 0; m < M; ++m)
#pragma unroll
    for (int r = 0; r < WR; ++r)
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) acc[m][r] += __shfl_xor_sync(0xffffffffu, acc[m][r], off);

  T* out = static_cast<T*>(args.out);
  if (lane == 0) {
#pragma unroll
    for (int m = 0; m < M; ++m) {
      if (!valid[m]) continue;
      T* orow = out + static_cast<int64_t>(pair[m]) * args.n_out + n0;
#pragma unroll
      for (int r = 0; r < ROWS; ++r) {
        const float v = GATE_UP ? silu_f(acc[m][r]) * acc[m][ROWS + r] : acc[m][r];
        orow[r] = from_float<T>(v);
      }
    }
  }
}

}  // namespace ferrum::moe
