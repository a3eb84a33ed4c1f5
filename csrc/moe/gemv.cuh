// Weight-streaming GEMV tier of the grouped MoE GEMMs (a handful of tokens).
//
// Work: tiles of kGemvBlockM (4) pairs of one expert, from moe_align. An item is (tile, column
// group of ROWS output columns); its weights are WR = ROWS rows (down) or 2 * ROWS rows (gate_up: the
// gate and up rows of each column, moe_common.cuh gate_row / up_row), k elements each. Items are
// numbered tile-major (column group fastest) and dealt round-robin to the warps of a grid sized to be
// resident at once (SMs x occupancy, moe_gemv.cu): warp g takes items g, g + W, g + 2W, ... (W =
// warps in the grid).
// The tiles in use (below num_padded) are a prefix of the tile list, so the items in use are a prefix
// of the numbering and every warp gets the same number of them, +-1, whatever the routing; a warp
// stops at its first item past num_padded. Launch shape from host values only (graph-safe).
//
// Per warp, a software pipeline over stages (UNROLL 16-byte streaming loads per lane and weight row,
// i.e. 32 * UNROLL consecutive 16-byte chunks of each row; an item has ceil(k / (256 * UNROLL))
// stages): the loads of stage q + 1, which may belong to the next item, are issued before the FMAs of
// stage q, in two register buffers (the loop is unrolled by two so the buffers never move). The next
// item's expert id is fetched one item ahead and its pair ids when its first loads issue, so no
// index load sits between two stages' weight loads. Activation rows (at most 4 per tile) are read
// through L1 at FMA time (all warps of a CTA mostly share a tile). Per item: fp32 accumulation per
// lane in chunk order, warp-shuffle reduction, SiLU(gate) * up (gate_up), one store per column and
// valid pair: the same arithmetic, in the same order, as the one-shot kernel it replaced.
//
// Work before griddepcontrol.wait (PDL, common/pdl_launch.h), so DRAM streams while the previous kernel ends:
// - gate_up, while moe_align runs (P <= 32): predicts its first item's expert from the router's ids
//   (moe_align's layout, computed in-warp) and L2-prefetches that item's rows. A hint only.
// - down reads the tile list of moe_align two launches back, final before gate_up passed its wait:
//   it issues its first stage into registers and L2-prefetches its next kGemvPrefetchItems items'
//   rows before it waits for h, so its weight stream starts in gate_up's tail.
//
// Napkin math, Qwen3-30B-A3B at T = 1 (8 experts, H 2048, I 768, bf16, H100: 132 SMs, ~3 TB/s):
//   weights 8 * 3 * 2048 * 768 * 2 B = 75.5 MB -> 25 us at 3.0 TB/s (gate_up 50.3 MB, down 25.2 MB);
//   FLOPs negligible (2 per weight element and pair). At ~3 TB/s and ~1 us loaded DRAM latency, each
//   SM needs >= 3 TB/s * 1 us / 132 = ~23 KB of loads in flight, more to ride out the tail.
//   gate_up (ROWS 1, UNROLL 4): stage = 2 rows * 4 loads * 16 B * 32 lanes = 4 KB per warp, 1-2 stages
//     in flight -> 4-8 KB per warp, 2 CTAs x 8 warps per SM -> 64-128 KB per SM. Items: 8 * 768 =
//     6144 over 2112 warps: 2-3 items (8 KB each) per warp, 2 stages per item.
//   down (ROWS 2, UNROLL 3): stage = 2 rows * 3 loads * 16 B * 32 lanes = 3 KB (a whole 768-element
//     row pair), 3-6 KB in flight per warp, 16-24 warps per SM -> 48-144 KB per SM. Items: 8 * 1024.
// The one-shot kernel kept each warp's loads in flight once (then reduce, exit, relaunch a CTA after
// a dependent num_padded -> block_expert -> sorted_ids chain): ~55% of the time in flight, 1.6-1.85 TB/s.
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

// Items of a warp whose weights down L2-prefetches before its griddepcontrol.wait (after the first,
// which it loads into registers).
constexpr int kGemvPrefetchItems = 3;

// Streaming GEMV over the tile list (file comment). Launch: kGemvWarps * 32 threads, any 1-D grid
// (moe_gemv.cu sizes it to be resident at once); n_out % ROWS == 0, k % 64 == 0.
template <typename T, bool GATE_UP, int ROWS, int UNROLL, int MIN_CTAS>
__global__ void __launch_bounds__(kGemvWarps * 32, MIN_CTAS) moe_gemv_kernel(const GemmArgs args) {
  constexpr int M = kGemvBlockM;
  constexpr int WR = GATE_UP ? 2 * ROWS : ROWS;  // weight rows per item
  constexpr int kStageChunks = 32 * UNROLL;      // 16-byte chunks per row and stage
  const int lane = threadIdx.x % 32;
  const int nwarps = gridDim.x * kGemvWarps;
  const int gw = blockIdx.x * kGemvWarps + threadIdx.x / 32;
  const int ncg = args.n_out / ROWS;                 // column groups per tile
  const int dt = nwarps / ncg, dc = nwarps - dt * ncg;  // item step nwarps = dt tiles + dc groups
  const int chunks = args.k / 8;
  const int stages = (chunks + kStageChunks - 1) / kStageChunks;
  const T* const w_all = static_cast<const T*>(args.w);
  const int64_t expert_elems = static_cast<int64_t>(GATE_UP ? 2 * args.n_out : args.n_out) * args.k;
  static_assert(!GATE_UP || 8 % ROWS == 0, "an item's gate rows must be consecutive in an interleaved w13");
  const bool interleaved = GATE_UP && args.gate_up_interleaved;
  // An item's first weight row (column group cg), and its up rows' distance from its gate rows.
  auto group_off = [&](int cg) -> int64_t {
    return static_cast<int64_t>(GATE_UP ? gate_row(cg * ROWS, interleaved) : cg * ROWS) * args.k;
  };
  const int64_t up_off = static_cast<int64_t>(up_row(0, args.n_out, interleaved) - gate_row(0, interleaved)) * args.k;
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
        const T* pb = w_all + expert * expert_elems + group_off(cg);
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
    return expert >= 0 ? w_all + expert * expert_elems + group_off(cg) : nullptr;
  };
  auto row_off = [&](int r) -> int64_t {
    return (GATE_UP && r >= ROWS) ? up_off + static_cast<int64_t>(r - ROWS) * args.k
                                  : static_cast<int64_t>(r) * args.k;
  };
  auto issue = [&](Vec16<T> (&buf)[UNROLL][WR], const T* wb, int s) {
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      const int c = s * kStageChunks + u * 32 + lane;
      const bool on = wb != nullptr && c < chunks;
#pragma unroll
      for (int r = 0; r < WR; ++r) {
        if (on) {
          buf[u][r] = load_vec16_stream(wb + row_off(r) + c * 8);
        } else {
          *reinterpret_cast<uint4*>(&buf[u][r]) = make_uint4(0, 0, 0, 0);
        }
      }
    }
  };

  // Load side: item (l_tile, l_cg), stage l_s, weights l_w, pair ids l_pair; the item after it:
  // (n_tile, n_cg), n_ok, its expert n_exp (fetched one item ahead).
  int l_tile = gw / ncg, l_cg = gw - (gw / ncg) * ncg, l_s = 0;
  if (!in_range(l_tile)) {
    if constexpr (!GATE_UP) pdl_wait();
    return;
  }
  const T* l_w = weight_base(__ldg(args.block_expert + l_tile), l_cg);
  int l_pair[M];
#pragma unroll
  for (int m = 0; m < M; ++m) l_pair[m] = __ldg(args.sorted_ids + l_tile * M + m);
  int n_tile = l_tile, n_cg = l_cg;
  advance(n_tile, n_cg);
  bool n_ok = in_range(n_tile);
  int n_exp = n_ok ? __ldg(args.block_expert + n_tile) : -1;

  Vec16<T> buf0[UNROLL][WR], buf1[UNROLL][WR];
  issue(buf0, l_w, 0);

  if constexpr (!GATE_UP) {
    // Before the wait (h is not ready yet): L2 prefetch of the next items' weight rows, 128-byte lines.
    const int lines = args.k * static_cast<int>(sizeof(T)) / 128;  // per row
    int p_tile = n_tile, p_cg = n_cg, p_exp = n_exp;
    bool p_ok = n_ok;
    for (int i = 0; i < kGemvPrefetchItems && p_ok; ++i) {
      const T* pb = weight_base(p_exp, p_cg);
      if (pb != nullptr) {
        for (int idx = lane; idx < WR * lines; idx += 32) {
          const int r = idx / lines;
          prefetch_l2(pb + row_off(r) + (idx - r * lines) * (128 / static_cast<int>(sizeof(T))));
        }
      }
      advance(p_tile, p_cg);
      p_ok = in_range(p_tile);
      p_exp = p_ok ? __ldg(args.block_expert + p_tile) : -1;
    }
    pdl_wait();  // h from gate_up, the launch just before
    pdl_launch_dependents();
  }

  const T* const a = static_cast<const T*>(args.a);
  T* const out = static_cast<T*>(args.out);
  // Compute side: the item of the stage in the current buffer.
  int c_n0 = 0;
  int c_pair[M];
  bool c_valid[M];
  const T* c_x[M];
  float acc[M][WR];
#pragma unroll
  for (int m = 0; m < M; ++m) {
    c_pair[m] = 0;
    c_valid[m] = false;
    c_x[m] = a;
#pragma unroll
    for (int r = 0; r < WR; ++r) acc[m][r] = 0.f;
  }

  // One pipeline step: issue the stage after the one in cur into nxt, then the FMAs of cur.
  // Returns whether nxt holds a stage.
  auto step = [&](Vec16<T> (&cur)[UNROLL][WR], Vec16<T> (&nxt)[UNROLL][WR]) -> bool {
    const int cs = l_s;
    if (cs == 0) {  // cur holds the first stage of an item: it becomes the compute side's item
      const bool live = l_w != nullptr;
      c_n0 = l_cg * ROWS;
#pragma unroll
      for (int m = 0; m < M; ++m) {
        c_pair[m] = l_pair[m];
        c_valid[m] = live && l_pair[m] < args.num_pairs;
        c_x[m] = a + (c_valid[m] ? l_pair[m] / args.a_row_div : 0) * args.a_stride;
      }
    }
    bool more = true;
    if (++l_s == stages) {
      l_s = 0;
      if (n_ok) {
        l_tile = n_tile;
        l_cg = n_cg;
        l_w = weight_base(n_exp, l_cg);
#pragma unroll
        for (int m = 0; m < M; ++m) l_pair[m] = __ldg(args.sorted_ids + l_tile * M + m);
        advance(n_tile, n_cg);
        n_ok = in_range(n_tile);
        n_exp = n_ok ? __ldg(args.block_expert + n_tile) : -1;
      } else {
        more = false;
      }
    }
    if (more) issue(nxt, l_w, l_s);

#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      const int c = cs * kStageChunks + u * 32 + lane;
      if (c >= chunks) continue;
#pragma unroll
      for (int m = 0; m < M; ++m) {
        if (!c_valid[m]) continue;
        Vec16<T> xv;
        *reinterpret_cast<uint4*>(&xv) = __ldg(reinterpret_cast<const uint4*>(c_x[m] + c * 8));
#pragma unroll
        for (int r = 0; r < WR; ++r) acc[m][r] = dot8(xv, cur[u][r], acc[m][r]);
      }
    }

    if (cs == stages - 1) {  // the item is complete: reduce, epilogue, reset
#pragma unroll
      for (int m = 0; m < M; ++m) {
        if (!c_valid[m]) continue;
#pragma unroll
        for (int r = 0; r < WR; ++r)
#pragma unroll
          for (int off = 16; off > 0; off >>= 1) acc[m][r] += __shfl_xor_sync(0xffffffffu, acc[m][r], off);
        if (lane == 0) {
          T* orow = out + static_cast<int64_t>(c_pair[m]) * args.n_out + c_n0;
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
    }
    return more;
  };

  while (step(buf0, buf1) && step(buf1, buf0)) {
  }
}

}  // namespace ferrum::moe
