// The GEMV tier's down projection with the combine folded in (a handful of tokens):
//
//   out[t, n] = sum_{j = 0..k-1, ids[t, j] valid} weights[t, j] * T(h[t * k + j] . w2[ids[t, j]][n])
//
// One item = one output element (token t, column n); a warp owns items gw, gw + W, ... (W = warps of
// a grid sized to be resident at once). Per item the warp streams weight row n of each of the
// token's k experts (I elements each) and dots it with the pair's h row, read through L1 (every warp
// of a CTA works on the same token, so h stays there). Each dot is reduced across the warp, rounded
// to T (exactly as the separate down GEMV stores y) and added in j order with fmaf, exactly as
// moe_combine_kernel does: the result is deterministic and independent of the batch's other rows,
// and no y buffer or combine launch is needed.
//
// Work is a sequence of steps per warp, (item, batch of BATCH routes); the weight loads of step
// s + 1 (UNROLL 16-byte chunks per lane and route) are issued before the FMAs of step s, in two
// register buffers, so up to 2 * BATCH * UNROLL * 512 bytes per warp are in flight. The first
// step's loads are issued before griddepcontrol.wait (ids and weights are final: the router ran
// before moe_align and gate_up passed their waits), so the weight stream starts in gate_up's tail.
//
// Qwen3-30B-A3B at T = 1: 2048 items of 8 x 1.5 KB, one per warp of a 256-CTA grid, 25.2 MB.
#pragma once

#include "common/pdl.cuh"
#include "common/types.cuh"
#include "moe/gemv.cuh"
#include "moe/moe_common.cuh"

namespace ferrum::moe {

// Launch: kGemvWarps * 32 threads, any 1-D grid; inter % 8 == 0 and inter <= 256 * UNROLL.
template <typename T, int UNROLL, int BATCH>
__global__ void __launch_bounds__(kGemvWarps * 32, 2) moe_gemv_down_combine_kernel(const DownCombineArgs args) {
  const int lane = threadIdx.x % 32;
  const int nwarps = gridDim.x * kGemvWarps;
  const int gw = blockIdx.x * kGemvWarps + threadIdx.x / 32;
  const int64_t items = static_cast<int64_t>(args.num_tokens) * args.hidden;
  const int batches = (args.top_k + BATCH - 1) / BATCH;
  const int chunks = args.inter / 8;
  const T* const w2 = static_cast<const T*>(args.w2);
  const T* const h = static_cast<const T*>(args.h);
  const int64_t expert_elems = static_cast<int64_t>(args.hidden) * args.inter;

  // Step s of this warp: item gw + (s / batches) * nwarps, routes [b * BATCH, b * BATCH + BATCH).
  struct Route {
    int pair;  // -1: no route (past top_k or an invalid id)
    float weight;
  };
  // Reads the routes of batch b of item's token into r and issues their weight rows into buf.
  auto issue = [&](Vec16<T> (&buf)[BATCH][UNROLL], int64_t item, int b, Route (&r)[BATCH]) {
    const int t = static_cast<int>(item / args.hidden);
    const int64_t n = item - static_cast<int64_t>(t) * args.hidden;
#pragma unroll
    for (int q = 0; q < BATCH; ++q) {
      const int j = b * BATCH + q;
      const int p = t * args.top_k + j;
      const int e = j < args.top_k ? __ldg(args.ids + p) : -1;
      const bool ok = e >= 0 && e < args.num_experts;
      r[q] = {ok ? p : -1, ok ? __ldg(args.weights + p) : 0.f};
      const T* row = w2 + (ok ? e * expert_elems + n * args.inter : 0);
#pragma unroll
      for (int u = 0; u < UNROLL; ++u) {
        const int c = u * 32 + lane;
        if (ok && c < chunks) {
          buf[q][u] = load_vec16_stream(row + c * 8);
        } else {
          *reinterpret_cast<uint4*>(&buf[q][u]) = make_uint4(0, 0, 0, 0);
        }
      }
    }
  };

  int64_t l_item = gw;  // load side: the step whose weights are issued next
  int l_b = 0;
  Route l_r[BATCH], c_r[BATCH];
  Vec16<T> buf0[BATCH][UNROLL], buf1[BATCH][UNROLL];
  if (l_item < items) issue(buf0, l_item, 0, l_r);
  pdl_wait();  // h from gate_up, the launch just before (PDL)
  pdl_launch_dependents();
  if (l_item >= items) return;

  T* const out = static_cast<T*>(args.out);
  float acc = 0.f;
  // One step: take the issued step as the compute side, issue the next one into nxt, FMAs of cur.
  auto step = [&](Vec16<T> (&cur)[BATCH][UNROLL], Vec16<T> (&nxt)[BATCH][UNROLL]) -> bool {
    const int64_t c_item = l_item;
    const int c_b = l_b;
#pragma unroll
    for (int q = 0; q < BATCH; ++q) c_r[q] = l_r[q];
    if (++l_b == batches) {
      l_b = 0;
      l_item += nwarps;
    }
    const bool more = l_item < items;
    if (more) issue(nxt, l_item, l_b, l_r);
#pragma unroll
    for (int q = 0; q < BATCH; ++q) {
      if (c_r[q].pair < 0) continue;
      const T* hrow = h + static_cast<int64_t>(c_r[q].pair) * args.inter;
      float dot = 0.f;
#pragma unroll
      for (int u = 0; u < UNROLL; ++u) {
        const int c = u * 32 + lane;
        if (c >= chunks) continue;
        Vec16<T> xv;
        *reinterpret_cast<uint4*>(&xv) = __ldg(reinterpret_cast<const uint4*>(hrow + c * 8));
        dot = dot8(xv, cur[q][u], dot);
      }
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, off);
      acc = fmaf(c_r[q].weight, to_float(from_float<T>(dot)), acc);  // y rounded to T, as stored
    }
    if (c_b == batches - 1) {
      if (lane == 0) out[c_item] = from_float<T>(acc);  // item = t * hidden + n
      acc = 0.f;
    }
    return more;
  };
  while (step(buf0, buf1) && step(buf1, buf0)) {
  }
}

}  // namespace ferrum::moe
