// Chunked-prefill attention over the paged KV cache (the long-chunk path of
// paged_attention_varlen): a FlashAttention-2-style kernel with 128 query rows
// per CTA, separate from the decode / plain / tiled-Q4 kernel template.
//
// One CTA owns (tile, kv head). A tile is up to floor(128 / group) consecutive
// query tokens of one sequence; its 128 rows are those tokens x the `group`
// query heads of the kv head (row r = token r / group, head r % group), so each
// K/V element the CTA reads serves every query head of its group. Tiles come
// from a device-built list (build_prefill_tiles_kernel), longest visible
// context first; the grid is (tile bound, kv heads), so CTAs of one kv head are
// dispatched together and share that head's K/V in L2.
//
// Per CTA: Q [128, D] -> shared memory (cp.async); K/V stream through a
// 2-stage (3 at head_dim 64) pipeline of 64-token tiles, block ids prefetched
// one tile ahead. Loads (PrefillKv, one instantiation each):
//   "vllm" on sm_90 (kKvVllmBulk, switch kVllmBulk; the decode kernel's scheme): a
//     head's block is contiguous in the cache (K [D/8][bs][8], V [D][bs]), so lane j
//     of warp 0 bulk-copies block j of a tile, D * bs * 2 bytes each of K and V, onto
//     the tile's mbarrier; the tiles keep the cache's layout per block.
//   "vllm" before sm_90 / with kVllmBulk off, and "nhd" at head_dim 96 / before sm_90 /
//     without tensor maps: every thread issues 16-byte cp.async pieces (its tokens
//     fixed across tiles, so it needs at most 2 block ids per tile); units past the
//     range zero-filled.
//   "nhd" on sm_90 with head_dim % 64 == 0 and the host's TMA maps
//     (PrefillParams::k_map / v_map, as the decode kernel): lane j of warp 0 copies
//     block j of a tile as D / 64 boxes of [bs tokens][64 dims] each of K and V
//     onto the tile's mbarrier; the boxes land 128-byte swizzled (see kv_unit).
// Shared-memory tiles (16-byte units):
//   K, V "nhd" cp.async: [D/8][64 tokens]                unit (t, c) at c * 64 + t
//   K, V "nhd" tensor:   [D/64][64 tokens][8 chunks]     unit (t, c) at chunk (c % 8) ^ (t % 8)
//                        of row (c / 8) * 64 + t (needs 1024-byte aligned tiles)
//   K "vllm" cp.async:   [D/8][64 tokens];  V "vllm" cp.async: [8 token groups][D] (8 tokens of one dim)
//   K "vllm" bulk:       [64/bs blocks][D/8][bs]         unit = 8 dims of one token
//   V "vllm" bulk:       [64/bs blocks][D][bs]           8 tokens of one dim per ldmatrix row; rows
//                        bs * 2 bytes apart: 2-way bank conflicts at bs 16, 4-way at bs 32
//   Q                    [D/8][128 rows]
// Warps split the rows: head_dim <= 128: 4 warps x 32 rows (two m16 tiles, so
// every K/V fragment read by ldmatrix feeds two mma); head_dim 256: 8 warps x 16 rows.
//   S = Q K^T : mma.sync m16n8k16, A = Q (registers at D = 64, else ldmatrix), B = K (ldmatrix)
//   online softmax on the fp32 accumulators (log2 domain, scale * log2 e folded in)
//   O += P V  : A = P (accumulators rounded to T), B = V (ldmatrix; .trans for "nhd")
// Causality: the CTA stops at its last row's visible end; masking is applied
// only to tiles that cross a row's limit; a warp skips tiles that lie wholly
// past its own rows. The epilogue normalises, stages O in shared memory and
// writes 16-byte rows.
//
// Napkin math (H100, h128, bf16, one 64-key tile of a CTA): 128 x 64 x 128 x 4 =
// 4.2 MFLOP against 32 KiB of K/V from L2 and 4 warps x 40 ldmatrix.x4 = 80 KiB
// of shared-memory reads (~640 clk at 128 B/clk) -> tensor-core bound at
// 2 CTAs/SM. DRAM: each (sequence, kv head) K/V is read ~once (L2 reuse across
// its q tiles): at B=4, L=4096, 8 kv heads that is 64 MiB against ~412 GFLOP.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cstdint>

#include "attention/mma_sync.cuh"
#include "common/bulk_copy.cuh"
#include "common/types.cuh"

namespace ferrum::attn::prefill {

constexpr int kTileKeys = 64;    // keys per pipeline stage
constexpr int kMinChunk = 64;    // chunks of at least this many query tokens take this kernel
constexpr int kRowsPerCta = 128;

// How a kernel instantiation loads K/V (template argument KV of paged_prefill_kernel).
enum PrefillKv : int {
  kKvVllm = 0,    // "vllm" cache, cp.async
  kKvNhd = 1,     // "nhd" cache, cp.async
  kKvNhdTma = 2,  // "nhd" cache, TMA tensor maps (sm_90, head_dim % 64 == 0, PrefillParams::nhd_tma)
  kKvVllmBulk = 3,  // "vllm" cache, bulk copies of whole blocks (sm_90; kKvVllm's cp.async path elsewhere)
};

// Host switch of the "nhd" tensor-map loads: false sends every "nhd" launch to the
// cp.async instantiation (the path measured before them).
constexpr bool kNhdTensorMaps = true;
// Host switch of the "vllm" bulk copies: true launches kKvVllmBulk for every "vllm" call,
// false kKvVllm (cp.async, the path measured before them). Only the chosen one is compiled.
constexpr bool kVllmBulk = true;

struct PrefillParams {
  // TMA maps of the "nhd" caches as [tokens][kv heads][D], boxes [bs][64] (valid when
  // nhd_tma; the kernel takes PrefillParams as a __grid_constant__ parameter, so they
  // stay in param space).
  CUtensorMap k_map, v_map;
  const void* q;
  void* out;
  const void* k_cache;
  const void* v_cache;
  const int* block_tables;
  const int* seq_lens;
  const int4* tiles;                        // (seq, first packed row, tokens, q_len - first q index)
  int64_t q_row_stride, q_head_stride;      // elements
  int64_t out_row_stride, out_head_stride;  // elements
  int64_t k_block_stride, v_block_stride;   // elements per cache block
  int64_t bt_stride;
  int num_kv_heads, group;
  int block_size, log2_block_size, max_blocks;
  bool vllm_layout;
  bool nhd_tma;      // k_map / v_map hold the "nhd" caches
  float scale_log2;  // softmax scale * log2(e)
};

template <int D>
struct PrefillCfg {
  static constexpr int kWarps = D >= 256 ? 8 : 4;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kMW = D >= 256 ? 1 : 2;  // m16 tiles per warp
  static constexpr int kRows = kWarps * kMW * 16;
  static constexpr int kStages = D <= 64 ? 3 : 2;
  static constexpr bool kQInRegs = kMW * D <= 128;
  static constexpr int kStageElems = kTileKeys * D;  // K (or V) elements per stage
  static constexpr int kMinBlocks = D >= 256 ? 1 : 2;
  static_assert(kRows == kRowsPerCta, "128 rows per CTA");
  static_assert(D % 32 == 0, "head_dim must be a multiple of 32");
};

// Dynamic shared memory of one CTA, in bytes: K/V stages + the Q tile + one
// mbarrier per stage (tensor-map loads) (the output staging area [128][D + 8]
// reuses the stages).
template <int D>
constexpr int prefill_smem_bytes() {
  return PrefillCfg<D>::kStages * 2 * PrefillCfg<D>::kStageElems * 2 + kRowsPerCta * D * 2 +
         PrefillCfg<D>::kStages * 8;
}

// ---- the prefill kernel ----------------------------------------------------

// KV: the cache layout and its loads (PrefillKv; p.vllm_layout, and p.nhd_tma for
// kKvNhdTma, must agree).
template <typename T, int D, int KV>
__global__ void __launch_bounds__(PrefillCfg<D>::kThreads, PrefillCfg<D>::kMinBlocks)
    paged_prefill_kernel(const __grid_constant__ PrefillParams p) {
  using Cfg = PrefillCfg<D>;
  constexpr int NT = Cfg::kThreads;
  constexpr int MW = Cfg::kMW;
  constexpr int ROWS = Cfg::kRows;
  constexpr int N = kTileKeys;
  constexpr int KS = D / 16;  // k-steps of S over head_dim
  constexpr int DN = D / 8;   // O n-tiles
  constexpr int CH = D / 8;   // 16-byte chunks per row
  constexpr int STAGES = Cfg::kStages;
  constexpr bool vllm_layout = KV == kKvVllm || KV == kKvVllmBulk;
  // "vllm" through bulk copies of whole blocks: sm_90 device code only (kKvVllmBulk compiles
  // to the cp.async path below sm_90, so the host may launch it anywhere).
  constexpr bool vbulk = KV == kKvVllmBulk && kBulkArch;
  constexpr bool vllm = vllm_layout && !vbulk;  // "vllm" through per-thread cp.async
  constexpr bool tma = KV == kKvNhdTma;  // "nhd" through the tensor maps
  constexpr bool mbar = tma || vbulk;    // warp 0 issues the K/V copies; they complete on mbarriers
  constexpr int SB = Cfg::kStageElems * 2;  // bytes of one K (or V) stage tile
  static_assert(!tma || D % 64 == 0, "tensor-map loads need head_dim % 64 == 0");

  extern __shared__ __align__(1024) uint8_t smem_raw[];  // 1024: the swizzle repeats every 8 rows of 128 B
  T* sK = reinterpret_cast<T*>(smem_raw);
  T* sV = sK + STAGES * Cfg::kStageElems;
  T* sQ = sV + STAGES * Cfg::kStageElems;
  const uint32_t bar0 = smem_addr(sQ + ROWS * D);  // STAGES mbarriers (tensor-map / bulk loads)

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int kvh = blockIdx.y;
  const int4 e = p.tiles[blockIdx.x];
  const int seq = e.x, row0 = e.y, n_q = e.z;
  if (n_q <= 0) return;  // padding entry of the tile list (block-uniform)

  const int seq_len = __ldg(p.seq_lens + seq);
  const int qpos0 = seq_len - e.w;
  const int cap = p.max_blocks << p.log2_block_size;  // never read past the block table
  auto visible = [&](int qpos) { return max(0, min(min(seq_len, qpos + 1), cap)); };
  const int valid_rows = min(n_q * p.group, ROWS);
  const int kv_end = visible(qpos0 + (valid_rows - 1) / p.group);
  const int n_tiles = (kv_end + N - 1) / N;

  const uint32_t sK0 = smem_addr(sK), sV0 = smem_addr(sV), sQ0 = smem_addr(sQ);
  if constexpr (tma) {
#if !(defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900)
    __trap();  // never launched there: the host encodes the maps on sm_90+ only
#endif
    // The swizzled unit formula (kv_unit) assumes 1024-byte aligned stage tiles; a
    // misplaced dynamic shared-memory window would silently read the wrong units.
    if ((sK0 & 1023u) != 0) __trap();
  }

  // ---- Q tile -> shared memory [D/8][ROWS] (16-byte units; zero rows past the tile) ----
  {
    const T* qb = static_cast<const T*>(p.q);
#pragma unroll 4
    for (int u = tid; u < ROWS * CH; u += NT) {
      const int r = u % ROWS, c = u / ROWS;
      const bool ok = r < valid_rows;
      const int rr = ok ? r : 0;
      const T* src = qb + static_cast<int64_t>(row0 + rr / p.group) * p.q_row_stride +
                     static_cast<int64_t>(kvh * p.group + rr % p.group) * p.q_head_stride + c * 8;
      cp_async_16(sQ0 + (c * ROWS + r) * 16, ok ? src : qb, ok);
    }
  }

  // ---- per-thread K/V load geometry (tokens fixed per thread across stages) ----
  const int bs = p.block_size, lbs = p.log2_block_size;
  const int* bt = p.block_tables + static_cast<int64_t>(seq) * p.bt_stride;
  const T* kc = static_cast<const T*>(p.k_cache);
  const T* vc = static_cast<const T*>(p.v_cache);
  const int64_t head_off = vllm_layout ? static_cast<int64_t>(kvh) * D * bs : static_cast<int64_t>(kvh) * D;
  const int64_t tok_stride = static_cast<int64_t>(p.num_kv_heads) * D;  // "nhd": elements between tokens
  // vllm: tok[0] = this thread's K token, tok[1] = its V 8-token group start.
  // nhd: tok[0], tok[1] = its two tokens (NT = 128) or one token twice (NT = 256).
  // tma / vbulk: tok[0] = the first token of block `lane` of a stage (warp 0 only loads).
  int tok[2];
  if constexpr (vllm) {
    tok[0] = tid & (N - 1);
    tok[1] = ((tid >> 3) & 7) * 8;
  } else if constexpr (mbar) {
    tok[0] = tok[1] = lane << lbs;
  } else {
    tok[0] = (tid & 7) + 8 * (tid >> 5);
    tok[1] = NT == 128 ? tok[0] + 32 : tok[0];
  }
  auto load_bids = [&](int s, int (&b)[2]) {
    if constexpr (mbar) {
      const int t = s * N + tok[0];
      b[0] = b[1] = (warp == 0 && s < n_tiles && tok[0] < N && t < kv_end) ? __ldg(bt + (t >> lbs)) : 0;
    } else {
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        const int t = s * N + tok[j];
        b[j] = (s < n_tiles && t < kv_end) ? __ldg(bt + (t >> lbs)) : 0;
      }
    }
  };

  if constexpr (mbar) {
    if (tid == 0) {
#pragma unroll
      for (int b = 0; b < STAGES; ++b) mbar_init(bar0 + b * 8, 1);
      fence_mbar_init();
    }
    __syncthreads();  // the mbarriers are initialised before any copy counts on them
  }

  auto issue_stage = [&](int s, const int (&b)[2]) {
    const int buf = s % STAGES;
    const int valid = kv_end - s * N;  // keys of this stage in range
    const uint32_t dK = sK0 + buf * SB, dV = sV0 + buf * SB;
    if constexpr (mbar) {
      // Warp 0 (block-uniform caller): lane j copies block j of the stage, K and V, if it
      // holds a key of the range; lane 0 announces the bytes (bs x D x 2 each) on the
      // stage's mbarrier. Tokens of a copied block past the range arrive too (masked in S;
      // V zeroed before P V).
      //   tma:   D / 64 boxes of [bs tokens][64 dims] each, landing as 128-byte rows (token t
      //          of the stage, dims h * 64.. at row h * 64 + t), 128-byte swizzled.
      //   vbulk: the head's block is contiguous in the cache (K [D/8][bs][8], V [D][bs]):
      //          one bulk copy each, to byte lane * D * bs * 2 of the stage tile, which so
      //          keeps the cache's layout per block (K [64/bs][D/8][bs] units, V [64/bs][D][bs]).
      if (warp != 0) return;
      const uint32_t bar = bar0 + buf * 8;
      const bool mine = tok[0] < min(valid, N);
      const int n = __popc(__ballot_sync(0xffffffffu, mine));
      // Earlier generic-proxy accesses of this buffer (ldmatrix of stage s - STAGES, ordered
      // by the __syncthreads before this call) before the async-proxy writes below.
      fence_proxy_async_smem();
      if (lane == 0) mbar_arrive_expect_tx(bar, static_cast<uint32_t>(n) * bs * D * 2 * 2);
      __syncwarp();
      if (mine) {
        if constexpr (tma) {
          const int t0 = b[0] << lbs;  // the block's first token row (the host checked tokens < 2^31)
#pragma unroll
          for (int h = 0; h < D / 64; ++h) {
            const uint32_t off = (h * N + tok[0]) * 128;
            tma_load_3d(dK + off, &p.k_map, h * 64, kvh, t0, bar);
            tma_load_3d(dV + off, &p.v_map, h * 64, kvh, t0, bar);
          }
        } else {
          // D * bs * 2: a multiple of 64 bytes (D % 32 == 0); cache rows 16-byte aligned (as cp.async needs)
          const uint32_t bytes = static_cast<uint32_t>(D * 2) << lbs;
          const int64_t bid = b[0];
          bulk_copy_g2s(dK + lane * bytes, kc + bid * p.k_block_stride + head_off, bytes, bar);
          bulk_copy_g2s(dV + lane * bytes, vc + bid * p.v_block_stride + head_off, bytes, bar);
        }
      }
    } else if constexpr (vllm) {
      {  // K [nb, kvh, D/8, bs, 8]: unit (chunk c, token t) -> smem unit c * 64 + t
        const int t = tok[0];
        const T* base = kc + static_cast<int64_t>(b[0]) * p.k_block_stride + head_off + (t & (bs - 1)) * 8;
        const bool ok = t < valid;
#pragma unroll
        for (int i = 0; i < N * CH / NT; ++i) {
          const int c = (tid >> 6) + i * (NT / 64);
          cp_async_16(dK + (c * N + t) * 16, base + c * bs * 8, ok);
        }
      }
      {  // V [nb, kvh, D, bs]: unit (8-token group g, dim d) -> smem unit g * D + d
        const int g = (tid >> 3) & 7;
        const T* base = vc + static_cast<int64_t>(b[1]) * p.v_block_stride + head_off + ((g * 8) & (bs - 1));
        const bool ok = g * 8 < valid;
#pragma unroll
        for (int i = 0; i < 8 * D / NT; ++i) {
          const int d = ((tid >> 6) + i * (NT / 64)) * 8 + (tid & 7);
          cp_async_16(dV + (g * D + d) * 16, base + static_cast<int64_t>(d) * bs, ok);
        }
      }
    } else {
      // K and V [nb, bs, kvh, D]: unit (token t, chunk c) -> smem unit c * 64 + t;
      // a warp covers 8 tokens x 4 consecutive chunks per instruction.
      const int cq = (tid >> 3) & 3;
#pragma unroll
      for (int j = 0; j < 256 / NT; ++j) {
        const int t = tok[j];
        const int64_t off = (t & (bs - 1)) * tok_stride + head_off;
        const T* kb = kc + static_cast<int64_t>(b[j]) * p.k_block_stride + off;
        const T* vb = vc + static_cast<int64_t>(b[j]) * p.v_block_stride + off;
        const bool ok = t < valid;
#pragma unroll
        for (int i = 0; i < CH / 4; ++i) {
          const int c = cq + 4 * i;
          const uint32_t so = (c * N + t) * 16;
          cp_async_16(dK + so, kb + c * 8, ok);
          cp_async_16(dV + so, vb + c * 8, ok);
        }
      }
    }
  };

  int bids[2];
  load_bids(0, bids);
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < n_tiles) issue_stage(s, bids);
    cp_async_commit();  // stage 0's group also carries Q
    load_bids(s + 1, bids);
  }

  // ---- per-warp rows and causal limits ----
  const int wrow0 = warp * MW * 16;
  const bool warp_active = wrow0 < valid_rows;  // warp-uniform
  const int wrow_last = min(wrow0 + MW * 16, valid_rows) - 1;
  const int warp_lim_lo = visible(qpos0 + wrow0 / p.group);      // smallest limit of the warp's rows
  const int warp_lim_hi = visible(qpos0 + wrow_last / p.group);  // largest
  int lim[MW][2];
#pragma unroll
  for (int mt = 0; mt < MW; ++mt)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = min(wrow0 + mt * 16 + (lane >> 2) + h * 8, valid_rows - 1);
      lim[mt][h] = visible(qpos0 + r / p.group);
    }

  float m_run[MW][2], l_run[MW][2];
  float o[MW][DN][4];
#pragma unroll
  for (int mt = 0; mt < MW; ++mt) {
    m_run[mt][0] = m_run[mt][1] = -INFINITY;
    l_run[mt][0] = l_run[mt][1] = 0.f;
#pragma unroll
    for (int i = 0; i < DN; ++i) o[mt][i][0] = o[mt][i][1] = o[mt][i][2] = o[mt][i][3] = 0.f;
  }

  const int mi = lane >> 3, li = lane & 7;
  auto q_addr = [&](int mt, int kk) {
    return sQ0 + ((2 * kk + (mi >> 1)) * ROWS + wrow0 + mt * 16 + (mi & 1) * 8 + li) * 16;
  };
  constexpr bool kQRegs = Cfg::kQInRegs;
  uint32_t qa[kQRegs ? MW : 1][kQRegs ? KS : 1][4];

  // tma: byte offset of the 16-byte unit (token t of a stage, 8-dim chunk c) in a swizzled
  // K or V tile. The ldmatrix reads use it strength-reduced: a thread's rows t all have
  // t % 8 == li and its chunks c % 8 are (even constant) | (0 or 1), so the swizzled chunk
  // is (constant) ^ (per-thread 0..7): the per-thread part (row, swizzle bits) is added once
  // (k_thr / v_thr) and the constant applied with XOR (the tiles are 1024-byte aligned, so
  // the bits of the chunk are free in the base address).
  auto kv_unit = [&](int t, int c) -> uint32_t { return (((c >> 3) * N + t) * 8 + ((c & 7) ^ (t & 7))) * 16; };
  const uint32_t k_thr = tma ? kv_unit((mi >> 1) * 8 + li, mi & 1) : 0;  // token (mi >> 1) * 8 + li, chunk mi & 1
  const uint32_t v_thr = tma ? kv_unit((mi & 1) * 8 + li, mi >> 1) : 0;  // token (mi & 1) * 8 + li, chunk mi >> 1
  // vbulk: per-block tiles. K unit (t, c) at ((t / bs) * D/8 + c) * bs + t % bs
  // = tb(t, D/8) + c * bs, V element (t, d) at ((t / bs) * D + d) * bs + t % bs = tb(t, D) + d * bs,
  // with tb(t, n) = t + (n - 1) * (t & -bs). The ldmatrix rows' tokens are t = u + w, u a
  // multiple of 16 (the n-tile / k-chunk: warp-uniform), w < 16 (per thread), and for bs 8,
  // 16, 32 (t & -bs) = (u & -bs) + (w & -bs): the addresses split into a per-thread constant
  // (vb_k_thr, vb_v_thr) plus a warp-uniform part (tb(u, n), and kk or dp times bs * 32 bytes
  // for K chunks 2 kk.. / V dims 16 dp..), which can stay in uniform registers.
  const int neg_bs = -bs;
  auto vb_tb = [&](int t, int n) { return t + (n - 1) * (t & neg_bs); };
  const uint32_t vb_step = static_cast<uint32_t>(bs) * 32;
  // K: tokens (mi >> 1) * 8 + li, chunk mi & 1; V: tokens (mi & 1) * 8.. (one row), dim (mi >> 1) * 8 + li
  const uint32_t vb_k_thr = vbulk ? (vb_tb((mi >> 1) * 8 + li, CH) + ((mi & 1) << lbs)) * 16 : 0;
  const uint32_t vb_v_thr = vbulk ? (vb_tb((mi & 1) * 8, D) + (((mi >> 1) * 8 + li) << lbs)) * 2 : 0;

  for (int s = 0; s < n_tiles; ++s) {
    cp_async_wait<STAGES - 2>();  // mbar: only Q's group is real (the K/V groups are empty)
    if constexpr (mbar) mbar_wait(bar0 + (s % STAGES) * 8, (s / STAGES) & 1);
    __syncthreads();  // stage s (and Q) visible to all; everyone is done with stage s - 1's buffer
    {
      const int next = s + STAGES - 1;
      if (next < n_tiles) issue_stage(next, bids);
      cp_async_commit();
      load_bids(next + 1, bids);
    }
    const int buf = s % STAGES;
    const int tok0 = s * N;
    const int valid = kv_end - tok0;
    if (vllm && valid < N && (valid & 7)) {
      // A "vllm" V unit holds 8 tokens: zero the tail of the partial one (the
      // cache may hold NaN there, and 0 * NaN would poison P V).
      T* v = sV + buf * Cfg::kStageElems + (valid >> 3) * D * 8;
      for (int i = tid; i < D * 8; i += NT)
        if ((i & 7) >= (valid & 7)) v[i] = from_float<T>(0.f);
      __syncthreads();
    } else if (tma && valid < N) {
      // The tensor copies leave a block's tokens past the range (NaN in the cache's unused
      // slots, 0 * NaN would poison P V) and stale data for blocks not copied: zero every
      // V row of a token >= valid (16-byte units: row u / 8 = (c / 8) * 64 + t). The last
      // tile only: its buffer is never refilled, so no async-proxy write follows these.
      uint4* v = reinterpret_cast<uint4*>(sV + buf * Cfg::kStageElems);
      for (int u = tid; u < Cfg::kStageElems / 8; u += NT)
        if (((u >> 3) & (N - 1)) >= valid) v[u] = make_uint4(0, 0, 0, 0);
      __syncthreads();
    } else if (vbulk && valid < N) {
      // As tma (the last tile only), tile [64/bs blocks][D][bs]: 16-byte unit u holds tokens
      // t..t+7 of one dim (bs >= 8), t = (block << lbs) + (u * 8) % bs; a unit that straddles
      // the end (mid-block ranges) is zeroed from token `valid` on.
      uint4* v = reinterpret_cast<uint4*>(sV + buf * Cfg::kStageElems);
      for (int u = tid; u < Cfg::kStageElems / 8; u += NT) {
        const int t = ((((u * 8) >> lbs) / D) << lbs) + ((u * 8) & (bs - 1));
        if (t >= valid) {
          v[u] = make_uint4(0, 0, 0, 0);
        } else if (t + 8 > valid) {
          T* x = reinterpret_cast<T*>(v + u);
          for (int k = valid - t; k < 8; ++k) x[k] = from_float<T>(0.f);
        }
      }
      __syncthreads();
    }
    if constexpr (kQRegs) {
      if (s == 0 && warp_active) {
#pragma unroll
        for (int mt = 0; mt < MW; ++mt)
#pragma unroll
          for (int kk = 0; kk < KS; ++kk) ldsm_x4(qa[mt][kk], q_addr(mt, kk));
      }
    }
    // Warp-uniform skips: no valid row, or every key of the tile lies past the warp's rows.
    if (!warp_active || tok0 >= warp_lim_hi) continue;
    const bool need_mask = tok0 + N > warp_lim_lo;

    // ---- S = Q K^T (MW x 8 n-tiles of 8 keys) ----
    float sc[MW][N / 8][4];
#pragma unroll
    for (int mt = 0; mt < MW; ++mt)
#pragma unroll
      for (int n = 0; n < N / 8; ++n) sc[mt][n][0] = sc[mt][n][1] = sc[mt][n][2] = sc[mt][n][3] = 0.f;
    const uint32_t kbase = sK0 + buf * SB;
#pragma unroll
    for (int kk = 0; kk < KS; ++kk) {
      uint32_t a[MW][4];
#pragma unroll
      for (int mt = 0; mt < MW; ++mt) {
        if constexpr (kQRegs) {
#pragma unroll
          for (int r = 0; r < 4; ++r) a[mt][r] = qa[mt][kk][r];
        } else {
          ldsm_x4(a[mt], q_addr(mt, kk));
        }
      }
#pragma unroll
      for (int j = 0; j < N / 16; ++j) {
        uint32_t b[4];
        // tokens j * 16 + (mi >> 1) * 8 + li, chunk 2 * kk + (mi & 1)
        if constexpr (tma) {
          ldsm_x4(b, ((kbase + k_thr) ^ (((2 * kk) & 7) << 4)) + ((kk >> 2) * N + j * 16) * 128);
        } else if constexpr (vbulk) {
          ldsm_x4(b, (kbase + (vb_tb(j * 16, CH) * 16 + kk * vb_step)) + vb_k_thr);
        } else {
          ldsm_x4(b, kbase + ((2 * kk + (mi & 1)) * N + j * 16 + (mi >> 1) * 8 + li) * 16);
        }
#pragma unroll
        for (int mt = 0; mt < MW; ++mt) {
          mma_16816<T>(sc[mt][2 * j], a[mt], b[0], b[1]);
          mma_16816<T>(sc[mt][2 * j + 1], a[mt], b[2], b[3]);
        }
      }
    }

    // ---- online softmax (log2 domain); rows r0 (h = 0) and r0 + 8 (h = 1) of each m-tile ----
#pragma unroll
    for (int mt = 0; mt < MW; ++mt) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        float mx = -INFINITY;
#pragma unroll
        for (int n = 0; n < N / 8; ++n) {
#pragma unroll
          for (int ee = 0; ee < 2; ++ee) {
            float& x = sc[mt][n][h * 2 + ee];
            x *= p.scale_log2;
            if (need_mask) {
              const int pos = tok0 + n * 8 + (lane & 3) * 2 + ee;
              x = pos < lim[mt][h] ? x : -INFINITY;
            }
            mx = fmaxf(mx, x);
          }
        }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float m_new = fmaxf(m_run[mt][h], mx);
        const float base = m_new == -INFINITY ? 0.f : m_new;
        const float alpha = fast_exp2(m_run[mt][h] - base);
        float sum = 0.f;
#pragma unroll
        for (int n = 0; n < N / 8; ++n) {
#pragma unroll
          for (int ee = 0; ee < 2; ++ee) {
            float& x = sc[mt][n][h * 2 + ee];
            x = fast_exp2(x - base);
            sum += x;
          }
        }
        l_run[mt][h] = l_run[mt][h] * alpha + sum;  // per-lane partial; quad-reduced at the end
        m_run[mt][h] = m_new;
#pragma unroll
        for (int i = 0; i < DN; ++i) {
          o[mt][i][h * 2] *= alpha;
          o[mt][i][h * 2 + 1] *= alpha;
        }
      }
    }

    // ---- O += P V ----
    const uint32_t vbase = sV0 + buf * SB;
#pragma unroll
    for (int kc16 = 0; kc16 < N / 16; ++kc16) {
      uint32_t pa[MW][4];
#pragma unroll
      for (int mt = 0; mt < MW; ++mt) {
        pa[mt][0] = pack2<T>(sc[mt][2 * kc16][0], sc[mt][2 * kc16][1]);
        pa[mt][1] = pack2<T>(sc[mt][2 * kc16][2], sc[mt][2 * kc16][3]);
        pa[mt][2] = pack2<T>(sc[mt][2 * kc16 + 1][0], sc[mt][2 * kc16 + 1][1]);
        pa[mt][3] = pack2<T>(sc[mt][2 * kc16 + 1][2], sc[mt][2 * kc16 + 1][3]);
      }
      const int t0 = kc16 * 16;
#pragma unroll
      for (int dp = 0; dp < D / 16; ++dp) {
        uint32_t b[4];
        if constexpr (vllm) {
          const int d = dp * 16 + (mi >> 1) * 8 + li, g = (t0 >> 3) + (mi & 1);
          ldsm_x4(b, vbase + (g * D + d) * 16);
        } else if constexpr (vbulk) {
          // 8 tokens of one dim per row, rows bs * 2 bytes apart: 2-way bank conflicts at bs 16, 4-way at 32
          ldsm_x4(b, (vbase + (vb_tb(t0, D) * 2 + dp * vb_step)) + vb_v_thr);
        } else if constexpr (tma) {
          // tokens t0 + (mi & 1) * 8 + li, chunk 2 * dp + (mi >> 1)
          ldsm_x4_trans(b, ((vbase + v_thr) ^ (((2 * dp) & 7) << 4)) + ((dp >> 2) * N + t0) * 128);
        } else {
          const int t = t0 + (mi & 1) * 8 + li, c = 2 * dp + (mi >> 1);
          ldsm_x4_trans(b, vbase + (c * N + t) * 16);
        }
#pragma unroll
        for (int mt = 0; mt < MW; ++mt) {
          mma_16816<T>(o[mt][2 * dp], pa[mt], b[0], b[1]);
          mma_16816<T>(o[mt][2 * dp + 1], pa[mt], b[2], b[3]);
        }
      }
    }
  }
  cp_async_wait<0>();
  __syncthreads();  // the stage buffers become the output staging area

  // ---- normalise, stage O [ROWS][D + 8] in shared memory, write 16-byte rows ----
  constexpr int OS = D + 8;  // padded row: conflict-free 4-byte writes from the mma layout
  T* sO = reinterpret_cast<T*>(smem_raw);
  if (warp_active) {
#pragma unroll
    for (int mt = 0; mt < MW; ++mt) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        float l = l_run[mt][h];
        l += __shfl_xor_sync(0xffffffffu, l, 1);
        l += __shfl_xor_sync(0xffffffffu, l, 2);
        const float inv = l > 0.f ? 1.f / l : 0.f;
        const int r = wrow0 + mt * 16 + (lane >> 2) + h * 8;
#pragma unroll
        for (int i = 0; i < DN; ++i) {
          const int col = i * 8 + (lane & 3) * 2;
          *reinterpret_cast<uint32_t*>(sO + r * OS + col) =
              pack2<T>(o[mt][i][h * 2] * inv, o[mt][i][h * 2 + 1] * inv);
        }
      }
    }
  }
  __syncthreads();
  T* ob = static_cast<T*>(p.out);
  for (int u = tid; u < valid_rows * CH; u += NT) {
    const int r = u / CH, c = u % CH;
    const uint4 val = *reinterpret_cast<const uint4*>(sO + r * OS + c * 8);
    T* dst = ob + static_cast<int64_t>(row0 + r / p.group) * p.out_row_stride +
             static_cast<int64_t>(kvh * p.group + r % p.group) * p.out_head_stride + c * 8;
    *reinterpret_cast<uint4*>(dst) = val;
  }
}

}  // namespace ferrum::attn::prefill
