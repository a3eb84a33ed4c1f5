// "stream" path of fused_moe for a handful of tokens (T * k <= 128 pairs): two persistent
// weight-streaming kernels, no moe_align, no separate combine.
//
//   gate_up: h[p, n] = silu(x[p / k] . w13[e, n]) * (x[p / k] . w13[e, I + n])
//   down   : y[p, n] = h[p] . w2[e, n] (rounded to the dtype), then in the same warp
//            out[t, n] = sum_j w[t, j] * y[t * k + j, n] in fp32, j in order (the combine).
//
// Slots. Every CTA derives the same table from topk_ids (<= 128 ids): the valid pairs
// of one expert, in ascending p, are cut into groups of <= kStreamGroup consecutive pairs; a slot
// is one group; slots are ordered by their first pair. A slot's weight rows are read once for all
// its pairs (with distinct ids per token, T <= 4 gives one slot per distinct expert hit).
//
// Work split (every SM streams until the end, no second wave):
//   gate_up: granule = one column n of one slot (its gate row and up row: 2 * H elements);
//            the slots * I granules are cut into gridDim.x contiguous equal ranges (one CTA per
//            SM), the warps of a CTA take every 8th granule of its range (adjacent warps read
//            adjacent rows). Per lane 2 * U 16-byte streaming loads in flight (8 KB per warp).
//   down   : granule = kDownCols (2) adjacent output columns n of H for ALL slots, so the warp
//            holds every y[p, n] and writes out[:, n] itself: fixed-order fp32 sums, no atomics, no
//            y workspace. Per load round kDownSlots slots x kDownCols rows x kDownChunks chunks per
//            lane (6 KB per warp); each h chunk is loaded once for both columns.
// The down kernel is launched with programmatic dependent launch right behind gate_up (both
// grids fit on the SMs together: 1 CTA each per SM, <= 128 registers per thread): it builds its
// table and prefetches its first weight rows into L2 while gate_up runs, then griddepcontrol.wait
// for h. gate_up likewise waits for the router behind its own prologue.
//
// Row independence: a pair's dot products use the same per-lane chunk order and the same
// xor-shuffle tree whatever the other pairs are, so out[t] depends on token t's inputs only.
//
// Napkin math, Qwen3-30B-A3B (H 2048, I 768, bf16), T = 1: 8 experts * 9.44 MB = 75.5 MB of weights
// (50.3 MB gate_up + 25.2 MB down) -> 25.5 us at 2.96 TB/s; h is 8 * 768 * 2 B, out 4 KB. T = 4:
// ~29 experts, 274 MB -> 93 us. T = 16: ~82 experts, 0.77 GB -> 262 us; x (64 KB) stays in L1, h
// (192 KB) is read once per 2 columns from L1/L2.
#pragma once

#include <type_traits>

#include "common/types.cuh"
#include "moe/moe_common.cuh"
#include "moe/moe_stream_launch.h"

namespace ferrum::moe {

constexpr int kStreamMaxPairs = kStreamPairLimit;  // T * k limit: one pair per thread builds the table
constexpr int kStreamGroup = 4;      // pairs per slot
constexpr int kStreamWarps = 8;
static_assert(kStreamMaxPairs <= kStreamWarps * 32 && kStreamMaxPairs % 4 == 0, "slot table build");
constexpr int kGateUpUnroll = 8;     // 16-byte loads per weight row and lane in flight (gate_up)
constexpr int kDownSlots = 2;        // slots per load round (down)
constexpr int kDownCols = 2;         // output columns per warp granule (down)
constexpr int kDownChunks = 3;       // 16-byte chunks per lane and row per load round (down; I = 768: 3 * 32 * 8)


struct SlotTable {
  int num_slots;
  int expert[kStreamMaxPairs];                 // expert of slot s
  int npairs[kStreamMaxPairs];                 // 1..kStreamGroup
  int pairs[kStreamMaxPairs][kStreamGroup];    // pair ids of slot s (ascending), -1 past npairs
  alignas(16) int pair_expert[kStreamMaxPairs];  // expert of pair p, -1 when its id is invalid
  int slot_of[kStreamMaxPairs];                // scratch: slot of a group's first pair
  int warp_firsts[kStreamWarps];               // scratch: groups started in each warp
};

// Built by the whole CTA (kStreamWarps * 32 threads, thread p handles pair p); ends synchronised.
// Cost: one load of <= 128 ids, a <= P / 4 step scan of shared memory, 4 barriers.
__device__ __forceinline__ void build_slot_table(SlotTable& st, const int* __restrict__ ids, int num_pairs,
                                                 int num_experts) {
  const int p = threadIdx.x, lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  int e = -1;
  if (p < num_pairs) {
    e = ids[p];
    if (e < 0 || e >= num_experts) e = -1;
  }
  if (p < kStreamMaxPairs) st.pair_expert[p] = e;
  for (int i = p; i < kStreamMaxPairs * kStreamGroup; i += blockDim.x) (&st.pairs[0][0])[i] = -1;
  __syncthreads();
  // cnt = pairs of the same expert before p (p's rank); lead = first pair of p's group of kStreamGroup.
  int cnt = 0, lead = p;
  if (e >= 0) {
    const int4* pe4 = reinterpret_cast<const int4*>(st.pair_expert);
    for (int q4 = 0; q4 < p; q4 += 4) {
      const int4 v = pe4[q4 / 4];
      const int vs[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        if (q4 + i < p && vs[i] == e) {
          if (cnt % kStreamGroup == 0) lead = q4 + i;
          ++cnt;
        }
      }
    }
  }
  if (cnt % kStreamGroup == 0) lead = p;
  const bool first = e >= 0 && cnt % kStreamGroup == 0;
  const unsigned ball = __ballot_sync(0xffffffffu, first);
  if (lane == 0) st.warp_firsts[warp] = __popc(ball);
  __syncthreads();
  int base = 0, num_slots = 0;
  for (int w = 0; w < kStreamWarps; ++w) {
    const int c = w < static_cast<int>(blockDim.x / 32) ? st.warp_firsts[w] : 0;
    base += w < warp ? c : 0;
    num_slots += c;
  }
  if (first) {
    const int s = base + __popc(ball & ((1u << lane) - 1u));
    st.slot_of[p] = s;
    st.expert[s] = e;
  }
  __syncthreads();
  if (e >= 0) st.pairs[st.slot_of[lead]][cnt % kStreamGroup] = p;
  __syncthreads();
  if (p < num_slots) {
    int n = 0;
#pragma unroll
    for (int m = 0; m < kStreamGroup; ++m) n += st.pairs[p][m] >= 0 ? 1 : 0;
    st.npairs[p] = n;
  }
  if (p == 0) st.num_slots = num_slots;
  __syncthreads();
}

template <typename T>
__device__ __forceinline__ float2 unpack2(uint32_t w) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return make_float2(__uint_as_float(w << 16), __uint_as_float(w & 0xffff0000u));
  } else {
    __half2 v;
    *reinterpret_cast<uint32_t*>(&v) = w;
    return __half22float2(v);
  }
}

// acc + sum_i x[i] * w[i] over 8 elements, i ascending, fp32 fma.
template <typename T>
__device__ __forceinline__ float dot8_f(const uint4& x, const uint4& w, float acc) {
  const uint32_t xs[4] = {x.x, x.y, x.z, x.w}, ws[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 a = unpack2<T>(xs[i]), b = unpack2<T>(ws[i]);
    acc = fmaf(a.x, b.x, acc);
    acc = fmaf(a.y, b.y, acc);
  }
  return acc;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

__device__ __forceinline__ uint4 ld_stream16(const void* p) { return __ldcs(reinterpret_cast<const uint4*>(p)); }
// x and h are written by the kernel launched just before, whose lifetime overlaps this one under
// programmatic dependent launch: the read-only path (ld.global.nc, __ldg) requires data that no
// one writes during the kernel, so these loads go through L2 (.cg), coherent after pdl_wait.
__device__ __forceinline__ uint4 ld_cached16(const void* p) { return __ldcg(reinterpret_cast<const uint4*>(p)); }

template <typename T>
__global__ void __launch_bounds__(kStreamWarps * 32, 2) moe_stream_gate_up_kernel(const StreamArgs args) {
  constexpr int U = kGateUpUnroll;
  __shared__ SlotTable st;
  // topk_ids / topk_weights come from the router kernel launched just before.
  pdl_wait();
  // The down kernel may be scheduled now: everything it reads before its own wait (ids, weights,
  // w2) is final once this grid has passed the wait above.
  pdl_launch_dependents();
  const int num_pairs = args.num_tokens * args.top_k;
  build_slot_table(st, args.topk_ids, num_pairs, args.num_experts);

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int H = args.hidden, I = args.inter, chunks = H / 8;
  const int64_t total = static_cast<int64_t>(st.num_slots) * I;  // < 2^31: slots <= 128, I < 2^24 (checked)
  const int g_begin = static_cast<int>(total * blockIdx.x / gridDim.x);
  const int g_end = static_cast<int>(total * (blockIdx.x + 1) / gridDim.x);
  const T* x = static_cast<const T*>(args.x);
  const T* w13 = static_cast<const T*>(args.w13);
  T* h = static_cast<T*>(args.h);

  const int row_lines = H * static_cast<int>(sizeof(T)) / 128;  // H * 2 B is a multiple of 128
  for (int g = g_begin + warp; g < g_end; g += kStreamWarps) {
    const int s = g / I, col = g - s * I;
    const int np = st.npairs[s];
    const T* wg = w13 + (static_cast<int64_t>(st.expert[s]) * 2 * I + col) * H;
    const T* wu = wg + static_cast<int64_t>(I) * H;
    if (g + kStreamWarps < g_end) {
      // The warp's next granule into L2 while this one is loaded and reduced: keeps DRAM busy
      // through the warp's compute phase (no registers held).
      const int gn = g + kStreamWarps, sn = gn / I, cn = gn - sn * I;
      const char* ng = reinterpret_cast<const char*>(w13 + (static_cast<int64_t>(st.expert[sn]) * 2 * I + cn) * H);
      const char* nu = ng + static_cast<int64_t>(I) * H * static_cast<int>(sizeof(T));
      for (int l = lane; l < 2 * row_lines; l += 32) prefetch_l2(l < row_lines ? ng + l * 128 : nu + (l - row_lines) * 128);
    }
    int pr[kStreamGroup];
    const T* xr[kStreamGroup];
#pragma unroll
    for (int m = 0; m < kStreamGroup; ++m) {
      pr[m] = st.pairs[s][m];
      xr[m] = x + static_cast<int64_t>(pr[m] >= 0 ? pr[m] / args.top_k : 0) * H;
    }
    float ag[kStreamGroup], au[kStreamGroup];
#pragma unroll
    for (int m = 0; m < kStreamGroup; ++m) ag[m] = au[m] = 0.f;

    for (int c0 = 0; c0 < chunks; c0 += 32 * U) {
      uint4 vg[U], vu[U];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int c = c0 + u * 32 + lane;
        if (c < chunks) {
          vg[u] = ld_stream16(wg + c * 8);
          vu[u] = ld_stream16(wu + c * 8);
        } else {
          vg[u] = vu[u] = make_uint4(0, 0, 0, 0);
        }
      }
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int c = c0 + u * 32 + lane;
        if (c >= chunks) continue;
#pragma unroll
        for (int m = 0; m < kStreamGroup; ++m) {
          if (m >= np) continue;
          const uint4 xv = ld_cached16(xr[m] + c * 8);
          ag[m] = dot8_f<T>(xv, vg[u], ag[m]);
          au[m] = dot8_f<T>(xv, vu[u], au[m]);
        }
      }
    }
#pragma unroll
    for (int m = 0; m < kStreamGroup; ++m) {
      if (m >= np) continue;  // np is the same on every lane
      const float gs = warp_sum(ag[m]), us = warp_sum(au[m]);
      if (lane == m) h[static_cast<int64_t>(pr[m]) * I + col] = from_float<T>(silu_f(gs) * us);
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kStreamWarps * 32, 2) moe_stream_down_kernel(const StreamArgs args) {
  constexpr int SU = kDownSlots, NC = kDownCols, CU = kDownChunks;
  __shared__ SlotTable st;
  __shared__ float pw[kStreamMaxPairs];                        // topk weight of pair p
  __shared__ float ysm[kStreamWarps][NC][kStreamMaxPairs];     // y[p, n] of the warp's current columns
  const int num_pairs = args.num_tokens * args.top_k;
  // Before the wait: ids and weights are final (gate_up released this grid only after its own
  // wait on the router), w2 is never written.
  for (int p = threadIdx.x; p < num_pairs; p += blockDim.x) pw[p] = args.topk_weights[p];
  build_slot_table(st, args.topk_ids, num_pairs, args.num_experts);

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int H = args.hidden, I = args.inter, chunks = I / 8;
  const int num_slots = st.num_slots;
  const int n_begin = static_cast<int>(static_cast<int64_t>(H) * blockIdx.x / gridDim.x);
  const int n_end = static_cast<int>(static_cast<int64_t>(H) * (blockIdx.x + 1) / gridDim.x);
  const T* w2 = static_cast<const T*>(args.w2);
  const T* h = static_cast<const T*>(args.h);
  T* out = static_cast<T*>(args.out);

  // L2 prefetch of the rows of this warp's first load round (first columns, first SU slots).
  const int row_lines = I * static_cast<int>(sizeof(T)) / 128;  // I * 2 B is a multiple of 128
  {
    const int n0 = n_begin + warp * NC;
    const int ns = min(SU, num_slots), nc = max(0, min(NC, n_end - n0));
    for (int i = lane; i < ns * nc * row_lines; i += 32) {
      const int r = i / row_lines, l = i % row_lines;
      const T* row = w2 + (static_cast<int64_t>(st.expert[r / nc]) * H + n0 + r % nc) * I;
      prefetch_l2(reinterpret_cast<const char*>(row) + l * 128);
    }
  }
  pdl_wait();  // h is complete
  pdl_launch_dependents();

  for (int n0 = n_begin + warp * NC; n0 < n_end; n0 += kStreamWarps * NC) {
    const int nc_live = min(NC, n_end - n0);  // 1 or NC
    for (int s0 = 0; s0 < num_slots; s0 += SU) {
      if (s0 + SU < num_slots) {  // the next round's rows into L2 (see gate_up)
        const int ns = min(SU, num_slots - s0 - SU);
        for (int i = lane; i < ns * nc_live * row_lines; i += 32) {
          const int r = i / row_lines, l = i % row_lines;
          const T* row = w2 + (static_cast<int64_t>(st.expert[s0 + SU + r / nc_live]) * H + n0 + r % nc_live) * I;
          prefetch_l2(reinterpret_cast<const char*>(row) + l * 128);
        }
      }
      float acc[SU][kStreamGroup][NC];
#pragma unroll
      for (int su = 0; su < SU; ++su)
#pragma unroll
        for (int m = 0; m < kStreamGroup; ++m)
#pragma unroll
          for (int c = 0; c < NC; ++c) acc[su][m][c] = 0.f;
      const T* wrow[SU][NC];
      bool live[SU][NC];
#pragma unroll
      for (int su = 0; su < SU; ++su)
#pragma unroll
        for (int c = 0; c < NC; ++c) {
          const int s = min(s0 + su, num_slots - 1), n = min(n0 + c, n_end - 1);
          wrow[su][c] = w2 + (static_cast<int64_t>(st.expert[s]) * H + n) * I;
          live[su][c] = s0 + su < num_slots && c < nc_live;
        }
      for (int cb = 0; cb < chunks; cb += 32 * CU) {
        uint4 wv[SU][NC][CU];
#pragma unroll
        for (int su = 0; su < SU; ++su)
#pragma unroll
          for (int c = 0; c < NC; ++c)
#pragma unroll
            for (int ci = 0; ci < CU; ++ci) {
              const int k = cb + ci * 32 + lane;
              wv[su][c][ci] = live[su][c] && k < chunks ? ld_stream16(wrow[su][c] + k * 8) : make_uint4(0, 0, 0, 0);
            }
#pragma unroll
        for (int su = 0; su < SU; ++su) {
          const int s = s0 + su;
          if (s >= num_slots) continue;
          const int np = st.npairs[s];
#pragma unroll
          for (int m = 0; m < kStreamGroup; ++m) {
            if (m >= np) continue;
            const T* hrow = h + static_cast<int64_t>(st.pairs[s][m]) * I;
#pragma unroll
            for (int ci = 0; ci < CU; ++ci) {
              const int k = cb + ci * 32 + lane;
              if (k >= chunks) continue;
              const uint4 hv = ld_cached16(hrow + k * 8);
#pragma unroll
              for (int c = 0; c < NC; ++c) acc[su][m][c] = dot8_f<T>(hv, wv[su][c][ci], acc[su][m][c]);
            }
          }
        }
      }
#pragma unroll
      for (int su = 0; su < SU; ++su) {
        const int s = s0 + su;
        if (s >= num_slots) continue;
        const int np = st.npairs[s];
#pragma unroll
        for (int m = 0; m < kStreamGroup; ++m) {
          if (m >= np) continue;
          const int p = st.pairs[s][m];
#pragma unroll
          for (int c = 0; c < NC; ++c) {
            const float v = warp_sum(acc[su][m][c]);
            if (lane == 0) ysm[warp][c][p] = to_float(from_float<T>(v));  // y rounded like the tiers
          }
        }
      }
    }
    __syncwarp();
    // Combine: out[t, n] = sum_j w[t, j] * y[t * k + j, n], j in order, invalid pairs skipped.
    for (int i = lane; i < args.num_tokens * nc_live; i += 32) {
      const int t = i / nc_live, c = i % nc_live;
      float a = 0.f;
      for (int j = 0; j < args.top_k; ++j) {
        const int p = t * args.top_k + j;
        if (st.pair_expert[p] >= 0) a = fmaf(pw[p], ysm[warp][c][p], a);
      }
      out[static_cast<int64_t>(t) * H + n0 + c] = from_float<T>(a);
    }
    __syncwarp();
  }
}

}  // namespace ferrum::moe
