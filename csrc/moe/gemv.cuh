// Weight-streaming GEMV tier of the grouped MoE GEMMs (a handful of tokens).
//
// Work: tiles of kGemvBlockM (4) pairs of one expert, from moe_align. An item is (tile, column
// group of ROWS output columns); its weights are WR = ROWS rows (down) or 2 * ROWS rows (gate_up: the
// gate row n and the up row n_out + n of each column), k elements each. Items are numbered tile-major
// (column group fastest) and dealt round-robin to the warps of a grid sized to be resident at once
// (SMs x occupancy, moe_gemv.cu): warp g takes items g, g + W, g + 2W, ... (W = warps in the grid).
// The tiles in use (below num_padded) are a prefix of the tile list, so the items in use are a prefix
// of the numbering and every warp gets the same number of them, +-1, whatever the routing; a warp
// stops at its first item past num_padded. Launch shape from host values only (graph-safe).
//
// Per warp, a ring of SLOTS shared-memory stages filled by cp.async (UNROLL 16-byte chunks per lane
// and weight row, i.e. 32 * UNROLL consecutive chunks of each row; an item has ceil(k / (256 *
// UNROLL)) stages): the load side runs SLOTS - 1 stages ahead of the compute side, across item
// boundaries, one cp.async group per stage. Each lane reads back only the chunks it copied itself,
// so the ring needs no barrier, not even __syncwarp: the warps of a CTA never wait for each other.
// The next item's expert id (load side) and pair ids (compute side) are fetched one item ahead, so
// no index load sits between two stages. Activation rows (at most 4 per tile) are read through L1
// at FMA time (all warps of a CTA mostly share a tile). Per item: fp32 accumulation per lane in
// chunk order, warp-shuffle reduction, SiLU(gate) * up (gate_up), one store per column and valid
// pair: the same arithmetic, in the same order, as the register-pipelined kernel it replaced.
//
// Work before griddepcontrol.wait (PDL, common/pdl_launch.h), so DRAM streams while the previous kernel ends:
// - gate_up, while moe_align runs (P <= 32): predicts its first item's expert from the router's ids
//   (moe_align's layout, computed in-warp) and L2-prefetches that item's rows. A hint only.
// - down reads the tile list of moe_align two launches back, final before gate_up passed its wait:
//   it fills its whole ring (SLOTS - 1 stages) before it waits for h, so its weight stream starts in
//   gate_up's tail.
//
// Napkin math, Qwen3-30B-A3B at T = 1 (8 experts, H 2048, I 768, bf16, H100: 132 SMs, ~3 TB/s):
//   weights 8 * 3 * 2048 * 768 * 2 B = 75.5 MB -> 25 us at 3.0 TB/s (gate_up 50.3 MB, down 25.2 MB);
//   FLOPs negligible (2 per weight element and pair). At ~3 TB/s and ~1-2 us loaded DRAM latency,
//   each SM needs 23-45 KB of loads in flight, more to ride out the tail.
//   The register pipeline this replaced held one 4 KB stage per warp in flight (2 register
//   buffers, 15 warps/SM by registers: <= 60 KB per SM) and streamed gate_up at ~1.8 TB/s.
//   gate_up (ROWS 1, UNROLL 4, 6 slots): stage = 2 rows * 4 * 16 B * 32 lanes = 4 KB, 5 in flight
//     per warp, 8 warps (one 192 KiB CTA) per SM -> 160 KB per SM. Items: 8 * 768 = 6144 over
//     1056 warps: ~6 items (2 stages each) per warp.
//   down (ROWS 2, UNROLL 3, 8 slots): stage = 2 rows * 3 * 16 B * 32 lanes = 3 KB (a whole 768-element
//     row pair), 7 in flight per warp -> 168 KB per SM; 8 * 1024 items: ~8 per warp, nearly all
//     requested before the wait for h.
#pragma once

#include "common/cache_policy.cuh"
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

// Shared memory of one CTA: each warp's ring of SLOTS stages (WR rows x 32 * UNROLL 16-byte chunks).
template <bool GATE_UP, int ROWS, int UNROLL, int SLOTS>
constexpr int gemv_smem_bytes() {
  return kGemvWarps * SLOTS * (GATE_UP ? 2 * ROWS : ROWS) * 32 * UNROLL * 16;
}

// Streaming GEMV over the tile list (file comment). Launch: kGemvWarps * 32 threads,
// gemv_smem_bytes() of dynamic shared memory, any 1-D grid (moe_gemv.cu sizes it to be resident at
// once); n_out % ROWS == 0, k % 64 == 0.
template <typename T, bool GATE_UP, int ROWS, int UNROLL, int SLOTS>
__global__ void __launch_bounds__(kGemvWarps * 32, 1) moe_gemv_kernel(const GemmArgs args) {
  constexpr int M = kGemvBlockM;
  constexpr int WR = GATE_UP ? 2 * ROWS : ROWS;  // weight rows per item
  constexpr int kStageChunks = 32 * UNROLL;      // 16-byte chunks per row and stage
  constexpr int kSlotChunks = WR * kStageChunks;
  static_assert(SLOTS >= 2, "a ring needs a slot to fill while one is read");
  extern __shared__ uint4 gemv_ring[];
  const int lane = threadIdx.x % 32;
  // Lane l's chunks of slot i: chunk (r, u) at ring[i * kSlotChunks + (r * UNROLL + u) * 32]
  // (consecutive lanes, consecutive 16 bytes: conflict-free).
  uint4* const ring = gemv_ring + (threadIdx.x / 32) * SLOTS * kSlotChunks + lane;
  const int nwarps = gridDim.x * kGemvWarps;
  const int gw = blockIdx.x * kGemvWarps + threadIdx.x / 32;
  const int ncg = args.n_out / ROWS;                 // column groups per tile
  const int dt = nwarps / ncg, dc = nwarps - dt * ncg;  // item step nwarps = dt tiles + dc groups
  const int chunks = args.k / 8;
  const int stages = (chunks + kStageChunks - 1) / kStageChunks;
  const T* const w_all = static_cast<const T*>(args.w);
  const int64_t expert_elems = static_cast<int64_t>(GATE_UP ? 2 * args.n_out : args.n_out) * args.k;
  const int64_t up_off = static_cast<int64_t>(args.n_out) * args.k;  // gate row n -> up row n_out + n
  if constexpr (GATE_UP) {
    // Before the wait, while moe_align runs: predict this warp's first item's expert from the router's
    // ids (final before moe_align passed its wait, common/pdl_launch.h) with moe_align's layout (experts
    // ascending, each run padded to M; the one-warp moe_align's arithmetic) and L2-prefetch its weight
    // rows. Only a hint: the tile list is read after the wait; a wrong guess costs bandwidth, not results.
    if (args.topk_ids != nullptr && args.num_pairs <= 32) {
      int e = lane < args.num_pairs ? __ldg(args.topk_ids + lane) : -1;
      if (e < 0 || e >= args.num_experts) e = -1;
      const unsigned peers = __match_any_sync(0xffffffffu, e);
      const bool leader = e >= 0 && (peers & ((1u << lane) - 1u)) == 0;
      const int padded = leader ? (__popc(peers) + M - 1) / M * M : 0;
      int start = 0;
      for (unsigned rest = __ballot_sync(0xffffffffu, leader); rest != 0; rest &= rest - 1) {
        const int j = __ffs(rest) - 1;
        const int ej = __shfl_sync(0xffffffffu, e, j);
        const int pj = __shfl_sync(0xffffffffu, padded, j);
        if (ej < e) start += pj;
      }
      const int tile = gw / ncg, cg = gw - (gw / ncg) * ncg;
      const unsigned hit = __ballot_sync(0xffffffffu, leader && start <= tile * M && tile * M < start + padded);
      if (hit != 0) {
        const int expert = __shfl_sync(0xffffffffu, e, __ffs(hit) - 1);
        const T* pb = w_all + expert * expert_elems + static_cast<int64_t>(cg) * ROWS * args.k;
        const int lines = args.k * static_cast<int>(sizeof(T)) / 128;  // 128-byte lines per row
        for (int idx = lane; idx < WR * lines; idx += 32) {
          const int r = idx / lines;
          const int64_t roff = r >= ROWS ? up_off + static_cast<int64_t>(r - ROWS) * args.k
                                         : static_cast<int64_t>(r) * args.k;
          prefetch_l2(pb + roff + (idx - r * lines) * (128 / static_cast<int>(sizeof(T))));
        }
      }
    }
    pdl_wait();  // tile list from moe_align, the launch just before (PDL launch, common/pdl_launch.h)
    pdl_launch_dependents();
  }
  const int num_padded = __ldg(args.num_padded);

  auto in_range = [&](int tile) { return tile < args.num_tiles && tile * M < num_padded; };
  auto advance = [&](int& tile, int& cg) {
    cg += dc;
    tile += dt;
    if (cg >= ncg) {
      cg -= ncg;
      ++tile;
    }
  };
  // First weight row of an item (null where the tile has no expert: its loads and stores are off).
  auto weight_base = [&](int expert, int cg) -> const T* {
    return expert >= 0 ? w_all + expert * expert_elems + static_cast<int64_t>(cg) * ROWS * args.k : nullptr;
  };
  auto row_off = [&](int r) -> int64_t {
    return (GATE_UP && r >= ROWS) ? up_off + static_cast<int64_t>(r - ROWS) * args.k
                                  : static_cast<int64_t>(r) * args.k;
  };
  // Load side: item (l_tile, l_cg), stage l_s, weights l_w, writing ring slot l_slot; the item after
  // it: (n_tile, n_cg), n_ok, its expert n_exp (fetched one item ahead, so no index load sits between
  // two stages' copies).
  int l_tile = gw / ncg, l_cg = gw - (gw / ncg) * ncg, l_s = 0, l_slot = 0;
  if (!in_range(l_tile)) {
    if constexpr (!GATE_UP) pdl_wait();
    return;
  }
  const int first_exp = __ldg(args.block_expert + l_tile);
  const T* l_w = weight_base(first_exp, l_cg);
  bool l_ok = true;
  int n_tile = l_tile, n_cg = l_cg;
  advance(n_tile, n_cg);
  bool n_ok = in_range(n_tile);
  int n_exp = n_ok ? __ldg(args.block_expert + n_tile) : -1;
  const uint64_t policy = l2_evict_first_policy();  // weights are read once: stream them evict-first

  // Copies the load side's stage into its slot (zero-filled past k or where the tile has no expert),
  // steps the load side, and commits a cp.async group (empty once the warp's items are issued, so
  // that group q is always stage q).
  auto issue = [&]() {
    if (l_ok) {
      uint4* dst = ring + l_slot * kSlotChunks;
#pragma unroll
      for (int u = 0; u < UNROLL; ++u) {
        const int c = l_s * kStageChunks + u * 32 + lane;
        const bool on = l_w != nullptr && c < chunks;
#pragma unroll
        for (int r = 0; r < WR; ++r) {
          cp_async16_evict_first(dst + (r * UNROLL + u) * 32, on ? l_w + row_off(r) + c * 8 : w_all, on, policy);
        }
      }
      l_slot = l_slot + 1 == SLOTS ? 0 : l_slot + 1;
      if (++l_s == stages) {
        l_s = 0;
        l_ok = n_ok;
        if (n_ok) {
          l_tile = n_tile;
          l_cg = n_cg;
          l_w = weight_base(n_exp, l_cg);
          advance(n_tile, n_cg);
          n_ok = in_range(n_tile);
          n_exp = n_ok ? __ldg(args.block_expert + n_tile) : -1;
        }
      }
    }
    cp_async_commit();
  };

#pragma unroll
  for (int q = 0; q < SLOTS - 1; ++q) issue();
  if constexpr (!GATE_UP) {
    pdl_wait();  // h from gate_up, the launch just before; the copies above need only the tile list
    pdl_launch_dependents();
  }

  const T* const a = static_cast<const T*>(args.a);
  T* const out = static_cast<T*>(args.out);
  // Compute side: walks the same items SLOTS - 1 stages behind the load side; the pair ids of its
  // next item (cn_*) are fetched one item ahead.
  int c_cg = gw - (gw / ncg) * ncg, c_s = 0, c_slot = 0, c_exp = first_exp;
  int cn_tile = gw / ncg, cn_cg = c_cg;
  int c_pair[M], cn_pair[M];
#pragma unroll
  for (int m = 0; m < M; ++m) c_pair[m] = __ldg(args.sorted_ids + cn_tile * M + m);
  advance(cn_tile, cn_cg);
  bool cn_ok = in_range(cn_tile);
  int cn_exp = cn_ok ? __ldg(args.block_expert + cn_tile) : -1;
#pragma unroll
  for (int m = 0; m < M; ++m) cn_pair[m] = cn_ok ? __ldg(args.sorted_ids + cn_tile * M + m) : 0;

  bool c_valid[M];
  const T* c_x[M];
  float acc[M][WR];
#pragma unroll
  for (int m = 0; m < M; ++m)
#pragma unroll
    for (int r = 0; r < WR; ++r) acc[m][r] = 0.f;

  while (true) {
    if (c_s == 0) {  // a new item on the compute side
#pragma unroll
      for (int m = 0; m < M; ++m) {
        c_valid[m] = c_exp >= 0 && c_pair[m] < args.num_pairs;
        c_x[m] = a + (c_valid[m] ? c_pair[m] / args.a_row_div : 0) * args.a_stride;
      }
    }
    cp_async_wait<SLOTS - 2>();  // stage in c_slot landed; each lane reads only the chunks it copied
    issue();                     // into the slot the previous stage used

    const uint4* src = ring + c_slot * kSlotChunks;
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      const int c = c_s * kStageChunks + u * 32 + lane;
      if (c >= chunks) continue;
      Vec16<T> w[WR];
#pragma unroll
      for (int r = 0; r < WR; ++r) *reinterpret_cast<uint4*>(&w[r]) = src[(r * UNROLL + u) * 32];
#pragma unroll
      for (int m = 0; m < M; ++m) {
        if (!c_valid[m]) continue;
        Vec16<T> xv;
        *reinterpret_cast<uint4*>(&xv) = __ldg(reinterpret_cast<const uint4*>(c_x[m] + c * 8));
#pragma unroll
        for (int r = 0; r < WR; ++r) acc[m][r] = dot8(xv, w[r], acc[m][r]);
      }
    }
    c_slot = c_slot + 1 == SLOTS ? 0 : c_slot + 1;

    if (++c_s == stages) {  // the item is complete: reduce, epilogue, reset, next item
#pragma unroll
      for (int m = 0; m < M; ++m) {
        if (!c_valid[m]) continue;
#pragma unroll
        for (int r = 0; r < WR; ++r)
#pragma unroll
          for (int off = 16; off > 0; off >>= 1) acc[m][r] += __shfl_xor_sync(0xffffffffu, acc[m][r], off);
        if (lane == 0) {
          T* orow = out + static_cast<int64_t>(c_pair[m]) * args.n_out + c_cg * ROWS;
#pragma unroll
          for (int r = 0; r < ROWS; ++r) {
            const float v = GATE_UP ? silu_f(acc[m][r]) * acc[m][ROWS + r] : acc[m][r];
            orow[r] = from_float<T>(v);
          }
        }
      }
#pragma unroll
      for (int m = 0; m < M; ++m)
#pragma unroll
        for (int r = 0; r < WR; ++r) acc[m][r] = 0.f;
      if (!cn_ok) break;
      c_s = 0;
      c_cg = cn_cg;
      c_exp = cn_exp;
#pragma unroll
      for (int m = 0; m < M; ++m) c_pair[m] = cn_pair[m];
      advance(cn_tile, cn_cg);
      cn_ok = in_range(cn_tile);
      cn_exp = cn_ok ? __ldg(args.block_expert + cn_tile) : -1;
#pragma unroll
      for (int m = 0; m < M; ++m) cn_pair[m] = cn_ok ? __ldg(args.sorted_ids + cn_tile * M + m) : 0;
    }
  }
  cp_async_wait<0>();
}

}  // namespace ferrum::moe
