// Weight-streaming GEMV tier of the grouped MoE GEMMs (a handful of tokens).
//
// Work: tiles of kGemvBlockM (4) pairs of one expert, from moe_align. An item is (tile, column
// group of ROWS output columns); its weights are WR = ROWS rows (down) or 2 * ROWS rows (gate_up: the
// gate row n and the up row n_out + n of each column), k elements each. Items are numbered tile-major
// (column group fastest). The tiles in use (below num_padded) are a prefix of the tile list, so the
// items in use are a prefix of the numbering. Launch shape from host values only (graph-safe): a grid
// of SMs x (resident CTAs per SM), capped by the items (moe_gemv.cu). Per item: fp32 accumulation,
// warp-shuffle reduction, SiLU(gate) * up (gate_up), one store per column and valid pair; the order
// of the sums is fixed by the launch shape, so results are deterministic run to run.
//
// sm_90: moe_gemv_bulk_kernel. Items are dealt to CTAs round-robin (CTA b: b, b + G, ...; every CTA
// gets the same number, +-1). An item's rows are contiguous in w (gate rows n0..n0+ROWS, up rows
// n_out + n0.., down rows n0..), so thread 0 loads an item with 1 (down) or 2 (gate_up) bulk copies
// (cp.async.bulk, the TMA engine, common/bulk_copy.cuh) into one stage of a ring of nst stage
// buffers, completing on the stage's mbarrier (tx bytes = the stage's bytes; 0 for a tile without
// an expert). Item i + nst - 1 is issued after the __syncthreads that follows the wait for item i
// (its buffer's readers, item i - 1's, are done: fence.proxy.async, then the copies), so nst - 1
// items stream while item i is computed. Warp w computes weight row w / (8 / WR), its chunks
// interleaved with the row's other warps (16-byte ld.shared per lane, conflict-free), against the
// tile's <= 4 activation rows read through L1; each warp's shuffle-reduced sums go to a shared
// [2][warps][4] buffer, and item i - 1's epilogue (ROWS * 4 threads sum the warps in a fixed order)
// runs after item i's __syncthreads: one barrier per item. Every issued stage is waited before exit.
// Where the ring does not fit (large k) or the code was not built for sm_90: moe_gemv_kernel below.
//
// Napkin math, Qwen3-30B-A3B at T = 1 (8 experts, H 2048, I 768, bf16, H100: 132 SMs, ~3 TB/s):
//   weights 8 * 3 * 2048 * 768 * 2 B = 75.5 MB -> 25 us at 3.0 TB/s (gate_up 50.3 MB, down 25.2 MB);
//   FLOPs negligible (2 per weight element and pair). At ~3 TB/s and ~1-2 us loaded DRAM latency an SM
//   needs >= 3 TB/s * 2 us / 132 = ~45 KB in flight; the ring is sized for ~2-4x that.
//   gate_up (ROWS 2): stage = 4 rows * 4 KB = 16 KB (2 copies of 8 KB); ring budget 96 KB -> 6 stages
//     per CTA, 2 CTAs per SM -> up to 2 * 5 * 16 = 160 KB in flight per SM. Items 8 * 384 = 3072 over
//     264 CTAs: 11-12 each (tail <= 1 item, ~3%). SM receives ~23 GB/s: an item per CTA per ~1.4 us;
//     its FMAs (8 K weights x <= 4 rows over 256 threads) take well under that.
//   down (ROWS 8): stage = 8 rows * 1.5 KB = 12 KB (1 copy); 8 stages (96 KB) per CTA, 2 CTAs per SM ->
//     up to 2 * 7 * 12 = 168 KB in flight per SM. Items 8 * 256 = 2048 over 264 CTAs: 7-8 each.
//   Shared memory per CTA: 384 B (mbarriers, partial sums) + ring; 2 CTAs = ~193 KB of 228 KB, the rest L1
//   (the activation rows: <= 4 * k * 2 B per tile).
//
// PDL (common/pdl_launch.h): gate_up waits first (its tile list is moe_align's, the launch before);
// down reads its tile list (moe_align's of two launches back, final once gate_up passed its wait) and
// issues its first nst - 1 stages (weights: always final) before it waits for h, so its weight stream
// starts in gate_up's tail. Every thread waits before its first global write and before exit.
//
// Fallback (moe_gemv_kernel): items dealt round-robin to warps; per warp a register software pipeline
// over stages of UNROLL 16-byte streaming loads per lane and weight row (two register buffers), the
// next item's expert fetched one item ahead. It reaches ~55% of DRAM peak on an H100 (the reason
// for the bulk kernel) and needs no shared memory.
#pragma once

#include "common/bulk_copy.cuh"
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
  const int64_t up_off = static_cast<int64_t>(args.n_out) * args.k;  // gate row n -> up row n_out + n
  if constexpr (GATE_UP) {
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

// ---- sm_90: bulk copies into a shared-memory ring (file comment) ----

constexpr int kGemvMaxStages = 8;     // mbarriers reserved at the start of shared memory
constexpr int kGemvRedOffset = 64;    // partial sums [2][kGemvWarps][kGemvBlockM] fp32 (256 B)
constexpr int kGemvRingOffset = 384;  // the ring: nst stages of stage_bytes, 128-byte aligned

// Dynamic shared memory of moe_gemv_bulk_kernel for nst stages of stage_bytes.
__host__ __device__ constexpr int gemv_bulk_smem(int nst, int stage_bytes) { return kGemvRingOffset + nst * stage_bytes; }

// Launch: kGemvWarps * 32 threads, any 1-D grid, gemv_bulk_smem(nst, WR * k * sizeof(T)) bytes of dynamic
// shared memory, 2 <= nst <= kGemvMaxStages; n_out % ROWS == 0, k % 8 == 0, w 16-byte aligned.
// Empty below sm_90: the host launches it only where its code was built for sm_90 (moe_gemv.cu).
template <typename T, bool GATE_UP, int ROWS>
__global__ void __launch_bounds__(kGemvWarps * 32) moe_gemv_bulk_kernel(const GemmArgs args, const int nst) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  constexpr int M = kGemvBlockM;
  constexpr int WR = GATE_UP ? 2 * ROWS : ROWS;  // weight rows per item
  constexpr int WPR = kGemvWarps / WR;           // warps per weight row
  static_assert(WR * WPR == kGemvWarps, "the warps must split the rows evenly");
  extern __shared__ __align__(128) uint8_t smem[];
  const uint32_t bar0 = smem_u32(smem);
  float* const red = reinterpret_cast<float*>(smem + kGemvRedOffset);
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int ncg = args.n_out / ROWS;  // column groups per tile
  const int chunks = args.k / 8;      // 16-byte chunks per weight row
  const uint32_t row_bytes = static_cast<uint32_t>(args.k) * sizeof(T);
  const uint32_t stage_bytes = WR * row_bytes;
  const T* const w_all = static_cast<const T*>(args.w);
  const int64_t expert_elems = static_cast<int64_t>(GATE_UP ? 2 * args.n_out : args.n_out) * args.k;
  const int64_t up_off = static_cast<int64_t>(args.n_out) * args.k;  // gate row n -> up row n_out + n

  if (tid == 0) {
    for (int b = 0; b < nst; ++b) mbar_init(bar0 + b * 8, 1);
    fence_mbar_init();
  }
  __syncthreads();
  if constexpr (GATE_UP) {
    pdl_wait();  // tile list from moe_align, the launch just before (PDL launch, common/pdl_launch.h)
    pdl_launch_dependents();
  }
  // down: the tile list is moe_align's of two launches back, final before gate_up passed its wait.
  const int num_padded = __ldg(args.num_padded);
  const int total = min(args.num_tiles, num_padded / M) * ncg;  // items in use: a prefix of the numbering
  const int G = gridDim.x;
  const int bid = blockIdx.x;
  const int n_items = total > bid ? (total - 1 - bid) / G + 1 : 0;  // this CTA's: bid, bid + G, ...
  auto tile_of = [&](int i, int& cg) {
    const int g = bid + i * G;
    const int tile = g / ncg;
    cg = g - tile * ncg;
    return tile;
  };
  // Thread 0: item i's weight rows (expert e) into buffer i % nst; a tile without an expert only
  // completes the phase. The fence orders the buffer's earlier readers (the __syncthreads before).
  auto issue = [&](int i, int e) {
    int cg;
    tile_of(i, cg);
    const int buf = i % nst;
    const uint32_t bar = bar0 + buf * 8, dst = bar0 + kGemvRingOffset + buf * stage_bytes;
    fence_proxy_async_smem();
    mbar_arrive_expect_tx(bar, e >= 0 ? stage_bytes : 0);
    if (e < 0) return;
    const T* src = w_all + e * expert_elems + static_cast<int64_t>(cg) * ROWS * args.k;
    bulk_copy_g2s(dst, src, ROWS * row_bytes, bar);
    if constexpr (GATE_UP) bulk_copy_g2s(dst + ROWS * row_bytes, src + up_off, ROWS * row_bytes, bar);
  };
  auto expert_of = [&](int i) {
    int cg;
    return __ldg(args.block_expert + tile_of(i, cg));
  };

  int iss_e = -1;  // thread 0: expert of item iss_i, the next to issue (read one issue ahead)
  if (tid == 0) {
    for (int i = 0; i < nst - 1 && i < n_items; ++i) issue(i, expert_of(i));
    if (nst - 1 < n_items) iss_e = expert_of(nst - 1);
  }
  if constexpr (!GATE_UP) {
    pdl_wait();  // h from gate_up, the launch just before
    pdl_launch_dependents();
  }

  const T* const a = static_cast<const T*>(args.a);
  T* const out = static_cast<T*>(args.out);
  // Item metadata, read one item ahead (nx_*), then the current (c_*) and previous (p_*) item's:
  // pair ids, expert, first column.
  int nx_pair[M], c_pair[M], p_pair[M];
  int nx_e = -1, c_e = -1, p_e = -1, nx_n0 = 0, c_n0 = 0, p_n0 = 0;
  auto load_next = [&](int i) {
    int cg;
    const int tile = tile_of(i, cg);
    nx_n0 = cg * ROWS;
    nx_e = __ldg(args.block_expert + tile);
#pragma unroll
    for (int m = 0; m < M; ++m) nx_pair[m] = __ldg(args.sorted_ids + tile * M + m);
  };
#pragma unroll
  for (int m = 0; m < M; ++m) nx_pair[m] = c_pair[m] = p_pair[m] = 0;
  if (n_items > 0) load_next(0);
  auto valid_mask = [&](const int (&pair)[M], int e) {
    unsigned v = 0;
#pragma unroll
    for (int m = 0; m < M; ++m) v |= (e >= 0 && pair[m] < args.num_pairs) ? 1u << m : 0u;
    return v;
  };
  // Threads t < ROWS * M: column t / M of pair slot t % M, from the warps' partial sums (fixed order).
  auto epilogue = [&](const float* rd, const int (&pair)[M], int e, int n0) {
    if (tid >= ROWS * M) return;
    const int col = tid / M, m = tid % M;
    int pr = 0;
#pragma unroll
    for (int j = 0; j < M; ++j) pr = j == m ? pair[j] : pr;
    if (e < 0 || pr >= args.num_pairs) return;
    float g = 0.f, u = 0.f;
#pragma unroll
    for (int j = 0; j < WPR; ++j) g += rd[(col * WPR + j) * M + m];
    if constexpr (GATE_UP) {
#pragma unroll
      for (int j = 0; j < WPR; ++j) u += rd[((ROWS + col) * WPR + j) * M + m];
    }
    const float v = GATE_UP ? silu_f(g) * u : g;
    out[static_cast<int64_t>(pr) * args.n_out + n0 + col] = from_float<T>(v);
  };

  const int row = warp / WPR, part = warp % WPR;  // this warp's weight row and share of its chunks
  int buf = 0;
  uint32_t phase = 0;
  for (int i = 0; i < n_items; ++i) {
    mbar_wait(bar0 + buf * 8, phase);
    __syncthreads();  // stage i visible to all; everyone is done with stage i - 1's buffer and wrote its sums
    if (tid == 0 && i + nst - 1 < n_items) {
      issue(i + nst - 1, iss_e);
      if (i + nst < n_items) iss_e = expert_of(i + nst);
    }
#pragma unroll
    for (int m = 0; m < M; ++m) {
      p_pair[m] = c_pair[m];
      c_pair[m] = nx_pair[m];
    }
    p_e = c_e;
    p_n0 = c_n0;
    c_e = nx_e;
    c_n0 = nx_n0;
    if (i + 1 < n_items) load_next(i + 1);
    if (i > 0) epilogue(red + ((i - 1) & 1) * kGemvWarps * M, p_pair, p_e, p_n0);

    const unsigned vmask = valid_mask(c_pair, c_e);
    const T* x[M];
#pragma unroll
    for (int m = 0; m < M; ++m) x[m] = a + ((vmask >> m) & 1 ? c_pair[m] / args.a_row_div : 0) * args.a_stride;
    const uint8_t* const wrow = smem + kGemvRingOffset + buf * stage_bytes + row * row_bytes;
    float acc[M];
#pragma unroll
    for (int m = 0; m < M; ++m) acc[m] = 0.f;
#pragma unroll 2
    for (int c = part * 32 + lane; c < chunks; c += WPR * 32) {
      Vec16<T> wv;
      *reinterpret_cast<uint4*>(&wv) = *reinterpret_cast<const uint4*>(wrow + c * 16);
#pragma unroll
      for (int m = 0; m < M; ++m) {
        if (!((vmask >> m) & 1)) continue;
        Vec16<T> xv;
        *reinterpret_cast<uint4*>(&xv) = __ldg(reinterpret_cast<const uint4*>(x[m] + c * 8));
        acc[m] = dot8(xv, wv, acc[m]);
      }
    }
    float* const rd = red + (i & 1) * kGemvWarps * M;
#pragma unroll
    for (int m = 0; m < M; ++m) {
      if (!((vmask >> m) & 1)) continue;
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) acc[m] += __shfl_xor_sync(0xffffffffu, acc[m], off);
      if (lane == 0) rd[warp * M + m] = acc[m];
    }
    if (++buf == nst) {
      buf = 0;
      phase ^= 1u;
    }
  }
  __syncthreads();  // the last item's sums
  if (n_items > 0) epilogue(red + ((n_items - 1) & 1) * kGemvWarps * M, c_pair, c_e, c_n0);
#else
  (void)args;
  (void)nst;
#endif
}

}  // namespace ferrum::moe
