// MoE router and bucketing.
//
// moe_route_kernel: one warp per token. Each lane holds E/32 logits (E <= 512,
// so at most 16 registers), softmax in fp32, then top-k by k rounds of a warp
// arg-max (ties to the lower expert index), then optional renormalisation in a
// fixed order. Bytes: T*E*sizeof(logit) read, T*k*8 written; trivially memory-bound.
//
// moe_align_kernel: one CTA. Pairs p = t*k + j are split into NW contiguous
// ranges, one per warp. Pass 1: per-warp per-expert histograms in shared memory.
// Pass 2: per expert, exclusive prefix over warps (so warp w's pairs of expert e
// follow warp w-1's), padded per-expert run lengths, an exclusive scan over
// experts. Pass 3: each warp walks its range again in order, ranks lanes of the
// same expert with __match_any_sync and writes p to its slot. Result: pairs
// grouped by expert ascending, ascending p inside each expert, deterministic.
// Shared memory: (NW + 2) * E ints.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <climits>
#include <cstdint>

#include "common/types.cuh"
#include "moe/moe_common.cuh"

namespace ferrum::moe {

constexpr int kRouteMaxExperts = 512;

// PER_LANE = ceil(E / 32) rounded up to 4, 8 or 16 (E <= 128, 256, 512).
template <typename T, int kRoutePerLane>
__global__ void moe_route_kernel(const T* __restrict__ logits, int64_t row_stride, int num_tokens, int num_experts,
                                 int top_k, bool renormalize, float* __restrict__ weights_out,
                                 int* __restrict__ ids_out) {
  // Launched with PDL (common/pdl_launch.h): the logits come from the kernel before. The MoE kernel
  // launched next (PDL too) may be scheduled once every CTA has passed this point; it waits for
  // this grid's completion before it reads weights_out / ids_out.
  pdl_wait();
  pdl_launch_dependents();
  const int lane = threadIdx.x % 32;
  const int64_t token = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  if (token >= num_tokens) return;
  const T* row = logits + token * row_stride;

  float v[kRoutePerLane];
  float mx = -INFINITY;
#pragma unroll
  for (int i = 0; i < kRoutePerLane; ++i) {
    const int e = lane + 32 * i;
    v[i] = e < num_experts ? to_float(row[e]) : -INFINITY;
    mx = fmaxf(mx, v[i]);
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
  float sum = 0.f;
#pragma unroll
  for (int i = 0; i < kRoutePerLane; ++i) {
    const int e = lane + 32 * i;
    v[i] = e < num_experts ? expf(v[i] - mx) : 0.f;
    sum += v[i];
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
  // Probabilities in [0, 1]; -1 marks experts that do not exist or were taken.
#pragma unroll
  for (int i = 0; i < kRoutePerLane; ++i) {
    const int e = lane + 32 * i;
    v[i] = e < num_experts ? v[i] / sum : -1.f;
  }

  float my_w = 0.f, wsum = 0.f;
  int my_id = -1;
  for (int j = 0; j < top_k; ++j) {
    float best = -2.f;
    int best_id = INT_MAX;
#pragma unroll
    for (int i = 0; i < kRoutePerLane; ++i) {  // expert ids grow with i: strict > keeps the lowest
      if (v[i] > best) {
        best = v[i];
        best_id = lane + 32 * i;
      }
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
      const float ob = __shfl_xor_sync(0xffffffffu, best, off);
      const int oi = __shfl_xor_sync(0xffffffffu, best_id, off);
      if (ob > best || (ob == best && oi < best_id)) {
        best = ob;
        best_id = oi;
      }
    }
    if (best_id == INT_MAX) best_id = 0;  // only with NaN logits; keeps the id in range
#pragma unroll
    for (int i = 0; i < kRoutePerLane; ++i) {
      if (lane + 32 * i == best_id) v[i] = -2.f;
    }
    if (lane == j) {
      my_w = best;
      my_id = best_id;
    }
    wsum += best;  // same value on every lane, summed in j order
  }
  if (lane < top_k) {
    if (renormalize) my_w = wsum > 0.f ? my_w / wsum : 1.f / static_cast<float>(top_k);
    weights_out[token * top_k + lane] = my_w;
    ids_out[token * top_k + lane] = my_id;
  }
}

constexpr int kAlignUnroll = 4;

__device__ __forceinline__ bool valid_expert(int e, int num_experts) { return e >= 0 && e < num_experts; }

// Lane's kAlignUnroll ids p = base + q * 32 + lane (-1 past p_end), all loaded before any is used.
__device__ __forceinline__ void load_warp_ids(const int* __restrict__ ids, int base, int p_end,
                                              int (&e)[kAlignUnroll]) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int q = 0; q < kAlignUnroll; ++q) {
    const int p = base + q * 32 + lane;
    e[q] = p < p_end ? __ldg(ids + p) : -1;
  }
}

// One warp counts the valid pairs of [p_begin, p_end) per expert into hist_w[E] (shared memory).
// Each lane loads kAlignUnroll ids before using any (load_warp_ids): latency hidden.
__device__ __forceinline__ void count_warp_pairs(const int* __restrict__ ids, int p_begin, int p_end,
                                                 int num_experts, int* hist_w) {
  for (int base = p_begin; base < p_end; base += 32 * kAlignUnroll) {
    int e[kAlignUnroll];
    load_warp_ids(ids, base, p_end, e);
#pragma unroll
    for (int q = 0; q < kAlignUnroll; ++q)
      if (valid_expert(e[q], num_experts)) atomicAdd(&hist_w[e[q]], 1);
  }
}

// One warp's stable scatter of [p_begin, p_end): pair p of expert e goes to slot
// slot_base[e] + hist_w[e] + (pairs of e in this warp before p), and hist_w[e] advances by the
// pairs placed; slot_base null: hist_w holds absolute slots. Rounds in q order keep p ascending
// (round q holds p = base + q*32 .. base + q*32 + 31), so the order inside an expert is p order.
__device__ __forceinline__ void scatter_warp_pairs(const int* __restrict__ ids, int p_begin, int p_end,
                                                   int num_experts, int* hist_w, const int* slot_base,
                                                   int* __restrict__ sorted_ids) {
  const int lane = threadIdx.x % 32;
  const unsigned lt_mask = (1u << lane) - 1u;
  for (int base = p_begin; base < p_end; base += 32 * kAlignUnroll) {
    int ev[kAlignUnroll];
    load_warp_ids(ids, base, p_end, ev);
#pragma unroll
    for (int q = 0; q < kAlignUnroll; ++q) {
      const int p = base + q * 32 + lane;
      const int e = valid_expert(ev[q], num_experts) ? ev[q] : -1;
      const unsigned peers = __match_any_sync(0xffffffffu, e);
      int slot = 0;
      if (e >= 0) slot = hist_w[e];
      __syncwarp();
      if (e >= 0) {
        sorted_ids[(slot_base != nullptr ? slot_base[e] : 0) + slot + __popc(peers & lt_mask)] = p;
        if (lane == 31 - __clz(peers)) hist_w[e] = slot + __popc(peers);
      }
      __syncwarp();
    }
  }
}

// Launch with one CTA of 32 * num_warps threads and (num_warps + 2) * num_experts ints
// of dynamic shared memory.
__global__ void moe_align_kernel(const int* __restrict__ ids, int num_pairs, int num_experts, int block_m,
                                 int max_padded, int max_tiles, int* __restrict__ sorted_ids,
                                 int* __restrict__ block_expert, int* __restrict__ num_padded) {
  // ids come from the router kernel launched just before (PDL launch, common/pdl_launch.h).
  pdl_wait();
  pdl_launch_dependents();
  extern __shared__ int smem[];
  const int nw = blockDim.x / 32;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  int* hist = smem;                           // [nw][E]: per-warp counts, then per-warp offsets
  int* start = smem + nw * num_experts;       // [E]: first padded slot of each expert
  int* count = start + num_experts;           // [E]

  for (int i = threadIdx.x; i < nw * num_experts; i += blockDim.x) hist[i] = 0;
  for (int i = threadIdx.x; i < max_padded; i += blockDim.x) sorted_ids[i] = num_pairs;  // sentinel
  __syncthreads();

  const int chunk = (num_pairs + nw - 1) / nw;
  const int p_begin = min(num_pairs, warp * chunk), p_end = min(num_pairs, p_begin + chunk);
  count_warp_pairs(ids, p_begin, p_end, num_experts, hist + warp * num_experts);
  __syncthreads();

  for (int e = threadIdx.x; e < num_experts; e += blockDim.x) {
    int run = 0;
    for (int w = 0; w < nw; ++w) {
      const int c = hist[w * num_experts + e];
      hist[w * num_experts + e] = run;
      run += c;
    }
    count[e] = run;
  }
  __syncthreads();

  // Exclusive scan of the padded run lengths over experts, by warp 0.
  if (warp == 0) {
    const int per_lane = (num_experts + 31) / 32;
    const int e0 = min(num_experts, lane * per_lane), e1 = min(num_experts, e0 + per_lane);
    int local = 0;
    for (int e = e0; e < e1; ++e) local += (count[e] + block_m - 1) / block_m * block_m;
    int incl = local;
#pragma unroll
    for (int off = 1; off < 32; off <<= 1) {
      const int o = __shfl_up_sync(0xffffffffu, incl, off);
      if (lane >= off) incl += o;
    }
    int run = incl - local;
    for (int e = e0; e < e1; ++e) {
      start[e] = run;
      run += (count[e] + block_m - 1) / block_m * block_m;
    }
    if (lane == 31) num_padded[0] = incl;
  }
  __syncthreads();

  // Tile -> expert map; tiles past the padded total are -1.
  for (int e = threadIdx.x; e < num_experts; e += blockDim.x) {
    const int t0 = start[e] / block_m, nt = (count[e] + block_m - 1) / block_m;
    for (int t = t0; t < t0 + nt; ++t) block_expert[t] = e;
  }
  {
    const int used_tiles = (start[num_experts - 1] + (count[num_experts - 1] + block_m - 1) / block_m * block_m) /
                           block_m;
    for (int t = used_tiles + threadIdx.x; t < max_tiles; t += blockDim.x) block_expert[t] = -1;
  }

  // Stable scatter: pair p goes to start[e] + (pairs of e before it).
  scatter_warp_pairs(ids, p_begin, p_end, num_experts, hist + warp * num_experts, start, sorted_ids);
}


// ---- One-warp moe_align (tiny T*k: decode) ---------------------------------------------------------
//
// Same output as moe_align_kernel for P <= kAlignWarpMaxPairs, any E: lane p holds pair p's expert;
// __match_any_sync gives each expert's count and each pair's rank among the lower lanes (ascending p
// inside an expert); an expert's first padded slot is the sum of the padded counts of the smaller
// experts present (one shuffle pass over the present experts' leader lanes). No shared memory and no
// __syncthreads: at T = 1 (8 pairs) the 1024-thread kernel spent its time zeroing and syncing.
constexpr int kAlignWarpMaxPairs = 32;

__global__ void __launch_bounds__(32) moe_align_warp_kernel(const int* __restrict__ ids, int num_pairs,
                                                            int num_experts, int block_m, int max_padded,
                                                            int max_tiles, int* __restrict__ sorted_ids,
                                                            int* __restrict__ block_expert,
                                                            int* __restrict__ num_padded) {
  pdl_wait();  // ids come from the router kernel launched just before (PDL launch, common/pdl_launch.h)
  pdl_launch_dependents();
  const int lane = threadIdx.x % 32;
  int e = lane < num_pairs ? __ldg(ids + lane) : -1;
  if (!valid_expert(e, num_experts)) e = -1;
  const unsigned peers = __match_any_sync(0xffffffffu, e);
  const unsigned lt_mask = (1u << lane) - 1u;
  const bool leader = e >= 0 && (peers & lt_mask) == 0;  // lowest lane of its expert
  const int padded = leader ? (__popc(peers) + block_m - 1) / block_m * block_m : 0;
  int start = 0, total = 0;
  for (unsigned rest = __ballot_sync(0xffffffffu, leader); rest != 0; rest &= rest - 1) {
    const int j = __ffs(rest) - 1;
    const int ej = __shfl_sync(0xffffffffu, e, j);
    const int pj = __shfl_sync(0xffffffffu, padded, j);
    if (ej < e) start += pj;
    total += pj;
  }
  for (int i = lane; i < max_padded; i += 32) sorted_ids[i] = num_pairs;  // sentinel
  __syncwarp();  // orders the sentinels before the scatter among the warp's threads
  if (e >= 0) sorted_ids[start + __popc(peers & lt_mask)] = lane;
  if (leader) {
    for (int t = start / block_m; t < (start + padded) / block_m; ++t) block_expert[t] = e;
  }
  for (int t = total / block_m + lane; t < max_tiles; t += 32) block_expert[t] = -1;
  if (lane == 0) num_padded[0] = total;
}

// ---- Multi-CTA moe_align (large T*k) ------------------------------------------------------------
//
// Same output as moe_align_kernel, in three launches (each waits for the one before: PDL, waiting
// first), for P >= kAlignMultiMinPairs and E <= kAlignMultiMaxExperts. CTA c owns the contiguous pairs
// [c * chunk, min(P, (c + 1) * chunk)); inside a CTA warp w owns the w-th eighth of that range.
//   count:   counts[c][e] = valid pairs of expert e in CTA c's range (shared-memory histogram;
//            counts only, so atomics leave no order in the output).
//   scan:    one CTA. Per expert e (one warp), counts[c][e] -> exclusive prefix over c; total[e];
//            start[e] = exclusive scan over e of padded totals; ends[e] = start[e] + padded[e];
//            num_padded.
//   scatter: CTA c re-counts its range per warp, turns the counts into slots start[e] +
//            counts[c][e] + (pairs of e in earlier warps), then walks its warps' ranges in order
//            like moe_align_kernel's pass 3. The grid also writes block_expert (tile t -> first e
//            with ends[e] > t * block_m, -1 past num_padded) and the sentinel P into every padding
//            slot ([start + total, ends) per expert and [num_padded, max_padded)): disjoint from the
//            scattered slots, so no write races.
// Workspace: counts [C * E] + start, ends, total [E] int32. Deterministic: ascending p inside an expert.
constexpr int kAlignMultiMinPairs = 4096;
constexpr int kAlignMultiMaxExperts = 1024;
constexpr int kAlignMultiWarps = 8;
constexpr int kAlignMultiMaxCtas = 64;
constexpr int kAlignMultiMinChunk = 2048;  // pairs per CTA at least; a multiple of kAlignMultiWarps * 32

__global__ void __launch_bounds__(kAlignMultiWarps * 32) moe_align_count_kernel(
    const int* __restrict__ ids, int num_pairs, int num_experts, int chunk, int* __restrict__ counts) {
  pdl_wait();  // ids come from the router launched before (PDL)
  pdl_launch_dependents();
  extern __shared__ int hist[];  // [E]
  for (int e = threadIdx.x; e < num_experts; e += blockDim.x) hist[e] = 0;
  __syncthreads();
  const int begin = blockIdx.x * chunk, end = min(num_pairs, begin + chunk);
#pragma unroll 4
  for (int p = begin + threadIdx.x; p < end; p += blockDim.x) {
    const int e = __ldg(ids + p);
    if (valid_expert(e, num_experts)) atomicAdd(&hist[e], 1);
  }
  __syncthreads();
  for (int e = threadIdx.x; e < num_experts; e += blockDim.x) counts[blockIdx.x * num_experts + e] = hist[e];
}

// One CTA of 1024 threads.
__global__ void __launch_bounds__(1024) moe_align_scan_kernel(int num_ctas, int num_experts, int block_m,
                                                              int* __restrict__ counts, int* __restrict__ start,
                                                              int* __restrict__ ends, int* __restrict__ total,
                                                              int* __restrict__ num_padded) {
  pdl_wait();
  pdl_launch_dependents();
  __shared__ int total_s[kAlignMultiMaxExperts];
  const int nw = blockDim.x / 32, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int e = warp; e < num_experts; e += nw) {
    int carry = 0;
    for (int c0 = 0; c0 < num_ctas; c0 += 32) {
      const int c = c0 + lane;
      const int v = c < num_ctas ? counts[c * num_experts + e] : 0;
      int incl = v;
#pragma unroll
      for (int off = 1; off < 32; off <<= 1) {
        const int o = __shfl_up_sync(0xffffffffu, incl, off);
        if (lane >= off) incl += o;
      }
      if (c < num_ctas) counts[c * num_experts + e] = carry + incl - v;
      carry += __shfl_sync(0xffffffffu, incl, 31);
    }
    if (lane == 0) total_s[e] = carry;
  }
  __syncthreads();
  if (warp == 0) {  // exclusive scan of the padded totals over experts, as in moe_align_kernel
    const int per_lane = (num_experts + 31) / 32;
    const int e0 = min(num_experts, lane * per_lane), e1 = min(num_experts, e0 + per_lane);
    int local = 0;
    for (int e = e0; e < e1; ++e) local += (total_s[e] + block_m - 1) / block_m * block_m;
    int incl = local;
#pragma unroll
    for (int off = 1; off < 32; off <<= 1) {
      const int o = __shfl_up_sync(0xffffffffu, incl, off);
      if (lane >= off) incl += o;
    }
    int run = incl - local;
    for (int e = e0; e < e1; ++e) {
      const int padded = (total_s[e] + block_m - 1) / block_m * block_m;
      start[e] = run;
      total[e] = total_s[e];
      run += padded;
      ends[e] = run;
    }
    if (lane == 31) num_padded[0] = incl;
  }
}

// Grid: the count kernel's CTAs; kAlignMultiWarps warps; (kAlignMultiWarps + 1) * E ints of shared memory.
__global__ void __launch_bounds__(kAlignMultiWarps * 32) moe_align_scatter_kernel(
    const int* __restrict__ ids, int num_pairs, int num_experts, int block_m, int max_padded, int max_tiles,
    int chunk, const int* __restrict__ counts, const int* __restrict__ start, const int* __restrict__ ends,
    const int* __restrict__ total, const int* __restrict__ num_padded_in, int* __restrict__ sorted_ids,
    int* __restrict__ block_expert) {
  pdl_wait();
  pdl_launch_dependents();
  extern __shared__ int smem[];
  constexpr int nw = kAlignMultiWarps;
  const int warp = threadIdx.x / 32;
  int* hist = smem;                       // [nw][E]: per-warp counts, then per-warp first slots
  int* ends_s = smem + nw * num_experts;  // [E]
  for (int i = threadIdx.x; i < nw * num_experts; i += blockDim.x) hist[i] = 0;
  for (int e = threadIdx.x; e < num_experts; e += blockDim.x) ends_s[e] = ends[e];
  __syncthreads();

  const int c = blockIdx.x;
  const int c_begin = c * chunk, c_end = min(num_pairs, c_begin + chunk);
  const int wchunk = chunk / nw;
  const int p_begin = min(c_end, c_begin + warp * wchunk), p_end = min(c_end, p_begin + wchunk);
  count_warp_pairs(ids, p_begin, p_end, num_experts, hist + warp * num_experts);
  __syncthreads();
  for (int e = threadIdx.x; e < num_experts; e += blockDim.x) {
    int run = start[e] + counts[c * num_experts + e];
    for (int w = 0; w < nw; ++w) {
      const int n = hist[w * num_experts + e];
      hist[w * num_experts + e] = run;
      run += n;
    }
  }
  __syncthreads();

  // Stable scatter (hist already holds absolute slots).
  scatter_warp_pairs(ids, p_begin, p_end, num_experts, hist + warp * num_experts, nullptr, sorted_ids);

  // Tile -> expert map and padding sentinels, spread over the whole grid.
  const int num_padded = num_padded_in[0];
  const int gtid = blockIdx.x * blockDim.x + threadIdx.x, gstride = gridDim.x * blockDim.x;
  for (int t = gtid; t < max_tiles; t += gstride) {
    const int s = t * block_m;
    int e = -1;
    if (s < num_padded) {  // first expert whose padded run ends after s (exists: ends[E-1] = num_padded)
      int lo = 0, hi = num_experts - 1;
      while (lo < hi) {
        const int mid = (lo + hi) >> 1;
        if (ends_s[mid] > s) {
          hi = mid;
        } else {
          lo = mid + 1;
        }
      }
      e = lo;
    }
    block_expert[t] = e;
  }
  if (block_m > 1) {
    const int pad = block_m - 1;
    for (int i = gtid; i < num_experts * pad; i += gstride) {
      const int e = i / pad;
      const int s = start[e] + total[e] + i % pad;
      if (s < ends_s[e]) sorted_ids[s] = num_pairs;
    }
  }
  for (int s = num_padded + gtid; s < max_padded; s += gstride) sorted_ids[s] = num_pairs;
}

}  // namespace ferrum::moe
