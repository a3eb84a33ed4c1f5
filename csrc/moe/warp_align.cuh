// moe_align's layout for at most kAlignWarpMaxPairs pairs, computed by one warp in registers (lane
// = pair): experts ascending, each expert's pairs in ascending order, its run padded to block_m.
// An expert's lanes are found with one __match_any, its first padded slot with one shuffle pass
// over the present experts' leader lanes. The one-warp moe_align writes the tile list from it; the
// GEMV tier computes it in every warp instead of reading that list (fused_moe then skips moe_align).
#pragma once

#include "moe/moe_common.cuh"

namespace ferrum::moe {

struct WarpAlign {
  int e;           // this lane's expert (-1: no pair, or an id outside [0, E))
  unsigned peers;  // lanes of the same expert
  bool leader;     // lowest lane of its expert
  int padded;      // the expert's run padded to block_m (leader lanes; else 0)
  int start;       // the expert's first slot (0 where e < 0)
  int total;       // slots in use (moe_align's num_padded), the same in every lane

  // Every lane of the warp calls it; ids [num_pairs] with num_pairs <= 32.
  __device__ __forceinline__ void init(const int* ids, int num_pairs, int num_experts, int block_m) {
    const int lane = threadIdx.x % 32;
    e = lane < num_pairs ? __ldg(ids + lane) : -1;
    if (e < 0 || e >= num_experts) e = -1;
    peers = __match_any_sync(0xffffffffu, e);
    leader = e >= 0 && (peers & ((1u << lane) - 1u)) == 0;
    padded = leader ? (__popc(peers) + block_m - 1) / block_m * block_m : 0;
    start = 0;
    total = 0;
    for (unsigned rest = __ballot_sync(0xffffffffu, leader); rest != 0; rest &= rest - 1) {
      const int j = __ffs(rest) - 1;
      const int ej = __shfl_sync(0xffffffffu, e, j);
      const int pj = __shfl_sync(0xffffffffu, padded, j);
      if (ej < e) start += pj;
      total += pj;
    }
  }

  // The leader lane of the run holding slot s (the same s in every lane), -1 past the runs.
  __device__ __forceinline__ int owner(int s) const {
    const unsigned hit = __ballot_sync(0xffffffffu, leader && start <= s && s < start + padded);
    return hit != 0 ? __ffs(hit) - 1 : -1;
  }

  // moe_align's block_expert[tile] (-1 past the runs); warp-uniform tile.
  __device__ __forceinline__ int tile_expert(int tile, int block_m) const {
    const int l = owner(tile * block_m);
    const int ex = __shfl_sync(0xffffffffu, e, l < 0 ? 0 : l);
    return l < 0 ? -1 : ex;
  }

  // moe_align's sorted_ids[s]: the pair in slot s, num_pairs for padding; warp-uniform s.
  __device__ __forceinline__ int slot_pair(int s, int num_pairs) const {
    const int l = owner(s);
    unsigned lanes = __shfl_sync(0xffffffffu, peers, l < 0 ? 0 : l);
    const int first = __shfl_sync(0xffffffffu, start, l < 0 ? 0 : l);
    const int o = s - first;
    if (l < 0 || o >= __popc(lanes)) return num_pairs;
    for (int i = 0; i < o; ++i) lanes &= lanes - 1;  // drop the o lowest lanes: pairs ascend
    return __ffs(lanes) - 1;
  }
};

}  // namespace ferrum::moe
