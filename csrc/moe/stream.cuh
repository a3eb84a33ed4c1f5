// "stream" path of fused_moe for a handful of tokens (T * k <= 64 pairs): two persistent
// weight-streaming kernels, no moe_align, no separate combine.
//
//   gate_up: h[p, n] = silu(x[p / k] . w13[e, n]) * (x[p / k] . w13[e, I + n])
//   down   : y[p, n] = h[p] . w2[e, n] (rounded to the dtype), then in the same warp
//            out[t, n] = sum_j w[t, j] * y[t * k + j, n] in fp32, j in order (the combine).
//
// Slots. Every CTA derives the same table from topk_ids (one warp, <= 64 ids): the valid pairs
// of one expert, in ascending p, are cut into groups of <= kStreamGroup consecutive pairs; a slot
// is one group; slots are ordered by their first pair. A slot's weight rows are read once for all
// its pairs (with distinct ids per token, T <= 4 gives one slot per distinct expert hit).
//
// Work split (every SM streams until the end, no second wave):
//   gate_up: granule = one column n of one slot (its gate row and up row: 2 * H elements);
//            the slots * I granules are cut into gridDim.x contiguous equal ranges (one CTA per
//            SM), the warps of a CTA take every 8th granule of its range (adjacent warps read
//            adjacent rows). Per lane 2 * U 16-byte streaming loads in flight (8 KB per warp).
//   down   : granule = one output column n of H for ALL slots, so the warp holds every y[p, n]
//            and writes out[:, n] itself: fixed-order fp32 sums, no atomics, no y workspace.
//            Rows are loaded kDownSlots slots x kDownChunks chunks per lane at a time (6 KB per warp).
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
// ~29 experts, 274 MB -> 93 us.
#pragma once

#include <type_traits>

#include "common/types.cuh"
#include "moe/moe_common.cuh"
#include "moe/moe_stream_launch.h"

namespace ferrum::moe {

constexpr int kStreamMaxPairs = kStreamPairLimit;  // T * k limit (one warp builds the table: 2 pairs per lane)
static_assert(kStreamMaxPairs == 64, "build_slot_table handles 64 pairs");
constexpr int kStreamGroup = 4;      // pairs per slot
constexpr int kStreamWarps = 8;
constexpr int kGateUpUnroll = 8;     // 16-byte loads per weight row and lane in flight (gate_up)
constexpr int kDownSlots = 4;        // slots per load round (down)
constexpr int kDownChunks = 3;       // 16-byte chunks per lane and row per load round (down; I = 768: 3 * 32 * 8)


struct SlotTable {
  int num_slots;
  int expert[kStreamMaxPairs];                 // expert of slot s
  int npairs[kStreamMaxPairs];                 // 1..kStreamGroup
  int pairs[kStreamMaxPairs][kStreamGroup];    // pair ids of slot s (ascending), -1 past npairs
  int pair_expert[kStreamMaxPairs];            // expert of pair p, -1 when its id is invalid
  int slot_of[kStreamMaxPairs];                // scratch: slot of a group's first pair
};

// Built by one full warp; the caller synchronises before other warps read it.
__device__ __forceinline__ void build_slot_table(SlotTable& st, const int* __restrict__ ids, int num_pairs,
                                                 int num_experts) {
  const int lane = threadIdx.x % 32;
  int e_lo = lane < num_pairs ? ids[lane] : -1;
  int e_hi = lane + 32 < num_pairs ? ids[lane + 32] : -1;
  if (e_lo >= num_experts) e_lo = -1;
  if (e_hi >= num_experts) e_hi = -1;
  if (e_lo < 0) e_lo = -1;
  if (e_hi < 0) e_hi = -1;
  // cnt = pairs of the same expert before p (p's rank); lead = first pair of p's group of kStreamGroup.
  int cnt_lo = 0, cnt_hi = 0, lead_lo = lane, lead_hi = lane + 32;
  for (int q = 0; q < num_pairs; ++q) {
    const int eq = __shfl_sync(0xffffffffu, q < 32 ? e_lo : e_hi, q % 32);
    if (e_lo >= 0 && eq == e_lo && q < lane) {
      if (cnt_lo % kStreamGroup == 0) lead_lo = q;
      ++cnt_lo;
    }
    if (e_hi >= 0 && eq == e_hi && q < lane + 32) {
      if (cnt_hi % kStreamGroup == 0) lead_hi = q;
      ++cnt_hi;
    }
  }
  if (cnt_lo % kStreamGroup == 0) lead_lo = lane;
  if (cnt_hi % kStreamGroup == 0) lead_hi = lane + 32;
  const bool first_lo = e_lo >= 0 && cnt_lo % kStreamGroup == 0;
  const bool first_hi = e_hi >= 0 && cnt_hi % kStreamGroup == 0;
  const unsigned m_lo = __ballot_sync(0xffffffffu, first_lo), m_hi = __ballot_sync(0xffffffffu, first_hi);
  const unsigned lt = (1u << lane) - 1u;
  const int n_lo = __popc(m_lo);
  for (int i = lane; i < kStreamMaxPairs * kStreamGroup; i += 32) (&st.pairs[0][0])[i] = -1;
  st.pair_expert[lane] = e_lo;
  st.pair_expert[lane + 32] = e_hi;
  if (first_lo) {
    const int s = __popc(m_lo & lt);
    st.slot_of[lane] = s;
    st.expert[s] = e_lo;
  }
  if (first_hi) {
    const int s = n_lo + __popc(m_hi & lt);
    st.slot_of[lane + 32] = s;
    st.expert[s] = e_hi;
  }
  __syncwarp();
  if (e_lo >= 0) st.pairs[st.slot_of[lead_lo]][cnt_lo % kStreamGroup] = lane;
  if (e_hi >= 0) st.pairs[st.slot_of[lead_hi]][cnt_hi % kStreamGroup] = lane + 32;
  __syncwarp();
  const int num_slots = n_lo + __popc(m_hi);
  for (int s = lane; s < num_slots; s += 32) {
    int n = 0;
#pragma unroll
    for (int m = 0; m < kStreamGroup; ++m) n += st.pairs[s][m] >= 0 ? 1 : 0;
    st.npairs[s] = n;
  }
  if (lane == 0) st.num_slots = num_slots;
}

// Two packed 16-bit values -> fp32 (bf16: a shift and a mask, no conversion instructions).
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
__device__ __forceinline__ uint4 ld_cached16(const void* p) { return __ldg(reinterpret_cast<const uint4*>(p)); }

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
  if (threadIdx.x < 32) build_slot_table(st, args.topk_ids, num_pairs, args.num_experts);
  __syncthreads();

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int H = args.hidden, I = args.inter, chunks = H / 8;
  const int64_t total = static_cast<int64_t>(st.num_slots) * I;
  const int64_t g_begin = total * blockIdx.x / gridDim.x, g_end = total * (blockIdx.x + 1) / gridDim.x;
  const T* x = static_cast<const T*>(args.x);
  const T* w13 = static_cast<const T*>(args.w13);
  T* h = static_cast<T*>(args.h);

  for (int64_t g = g_begin + warp; g < g_end; g += kStreamWarps) {
    const int s = static_cast<int>(g / I), col = static_cast<int>(g % I);
    const int np = st.npairs[s];
    const T* wg = w13 + (static_cast<int64_t>(st.expert[s]) * 2 * I + col) * H;
    const T* wu = wg + static_cast<int64_t>(I) * H;
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
  constexpr int SU = kDownSlots, CU = kDownChunks;
  __shared__ SlotTable st;
  __shared__ float pw[kStreamMaxPairs];                       // topk weight of pair p
  __shared__ float ysm[kStreamWarps][kStreamMaxPairs];        // y[p, n] of the warp's current n
  const int num_pairs = args.num_tokens * args.top_k;
  // Before the wait: ids and weights are final (gate_up released this grid only after its own
  // wait on the router), w2 is never written.
  if (threadIdx.x < 32) build_slot_table(st, args.topk_ids, num_pairs, args.num_experts);
  for (int p = threadIdx.x; p < num_pairs; p += blockDim.x) pw[p] = args.topk_weights[p];
  __syncthreads();

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int H = args.hidden, I = args.inter, chunks = I / 8;
  const int num_slots = st.num_slots;
  const int n_begin = static_cast<int>(static_cast<int64_t>(H) * blockIdx.x / gridDim.x);
  const int n_end = static_cast<int>(static_cast<int64_t>(H) * (blockIdx.x + 1) / gridDim.x);
  const T* w2 = static_cast<const T*>(args.w2);
  const T* h = static_cast<const T*>(args.h);
  T* out = static_cast<T*>(args.out);

  // L2 prefetch of the rows of this warp's first load round (first n, first SU slots).
  if (n_begin + warp < n_end) {
    const int row_lines = I * static_cast<int>(sizeof(T)) / 128;  // I * 2 B is a multiple of 128
    const int n = n_begin + warp;
    const int ns = min(SU, num_slots);
    for (int i = lane; i < ns * row_lines; i += 32) {
      const int s = i / row_lines, l = i % row_lines;
      const T* row = w2 + (static_cast<int64_t>(st.expert[s]) * H + n) * I;
      prefetch_l2_evict_last(reinterpret_cast<const char*>(row) + l * 128);
    }
  }
  pdl_wait();  // h is complete
  pdl_launch_dependents();

  for (int n = n_begin + warp; n < n_end; n += kStreamWarps) {
    for (int s0 = 0; s0 < num_slots; s0 += SU) {
      float acc[SU][kStreamGroup];
#pragma unroll
      for (int su = 0; su < SU; ++su)
#pragma unroll
        for (int m = 0; m < kStreamGroup; ++m) acc[su][m] = 0.f;
      const T* wrow[SU];
#pragma unroll
      for (int su = 0; su < SU; ++su) {
        const int s = min(s0 + su, num_slots - 1);
        wrow[su] = w2 + (static_cast<int64_t>(st.expert[s]) * H + n) * I;
      }
      for (int cb = 0; cb < chunks; cb += 32 * CU) {
        uint4 wv[SU][CU];
#pragma unroll
        for (int su = 0; su < SU; ++su)
#pragma unroll
          for (int ci = 0; ci < CU; ++ci) {
            const int c = cb + ci * 32 + lane;
            wv[su][ci] = s0 + su < num_slots && c < chunks ? ld_stream16(wrow[su] + c * 8) : make_uint4(0, 0, 0, 0);
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
              const int c = cb + ci * 32 + lane;
              if (c >= chunks) continue;
              acc[su][m] = dot8_f<T>(ld_cached16(hrow + c * 8), wv[su][ci], acc[su][m]);
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
          const float v = warp_sum(acc[su][m]);
          if (lane == 0) ysm[warp][st.pairs[s][m]] = to_float(from_float<T>(v));  // y rounded like the tiers
        }
      }
    }
    __syncwarp();
    // Combine: out[t, n] = sum_j w[t, j] * y[t * k + j, n], j in order, invalid pairs skipped.
    for (int t = lane; t < args.num_tokens; t += 32) {
      float a = 0.f;
      for (int j = 0; j < args.top_k; ++j) {
        const int p = t * args.top_k + j;
        if (st.pair_expert[p] >= 0) a = fmaf(pw[p], ysm[warp][p], a);
      }
      out[static_cast<int64_t>(t) * H + n] = from_float<T>(a);
    }
    __syncwarp();
  }
}

}  // namespace ferrum::moe
