// Paged attention over a block-table KV cache: decode (one query token per
// sequence), varlen (several query tokens per sequence, causal) and the
// tiled-Q4 varlen variant, all from one kernel template.
//
// One CTA (4 warps) owns (query tile, kv head, split): the query rows of the
// tile are all `group` query heads of the kv head times its query tokens, so
// every K/V element it touches is read from DRAM exactly once for all of them.
// The rows form MT m16 tiles of a tensor-core mma.m16n8k16 (fp32 accumulate):
//   S = Q K^T : A = Q rows (ldmatrix from smem), B = K tokens (ldmatrix),
//   O += P V  : A = P (the S accumulators rounded to T), B = V (ldmatrix, .trans for "nhd").
// K/V stream through a kStages-deep pipeline of 64-token stages (see Loads),
// online softmax in the log2 domain.
// Long contexts are split across CTAs (split-K): each split writes a
// normalised fp32 partial and its log2-sum-exp; merge_splits_kernel combines
// them. Both kernels are launched with programmatic dependent launch
// (common/pdl_launch.h): every thread waits for the previous grid before its
// first global access, and the attention kernel lets the merge be scheduled
// once its main loop is done, so the merge's launch hides behind the epilogue.
//
// Napkin math (H100, h128, bf16): a token of one kv head is 512 bytes of K+V;
// at 3 TB/s an SM receives ~13 B/clk, i.e. one 32 KiB stage per ~2400 clk,
// against ~32 mma + ~40 ldmatrix per warp per stage: memory-bound with a wide
// margin, so the design goal is bytes in flight (2 stages of 32 KiB per CTA,
// 2 CTAs per SM) and enough CTAs (split-K) to cover all SMs.
//
// Loads: on sm_90 (MT <= 2) one lane of warp 0 copies a whole cache block
// of K and of V per stage with the TMA engine (common/bulk_copy.cuh),
// completing on the stage's mbarrier. "vllm" blocks are contiguous per head
// (K [D/8][bs][8], V [D][bs]: D * bs * 2 bytes each): plain bulk copies, the
// shared tiles keep the cache's layout. "nhd" blocks of a head are bs rows of
// D strided by num_kv_heads * D: tensor-map boxes of [bs][64] (128-byte rows,
// 128-byte swizzle, AttnParams::k_map / v_map, head_dim a multiple of 64).
// Otherwise (MT 4, head_dim 96 "nhd", before sm_90) every thread issues 16-byte
// cp.async pieces into the tiles below (zero-filled past the end of the range).
//
// Shared-memory tiles (16-byte units; ldmatrix rows conflict-free except the
// bulk "vllm" V, whose 8-row reads are bs * 2 bytes apart: 2-way at bs 16):
//   K     cp.async: [D/8][64 tokens]          unit = 8 dims of one token
//         bulk:     [64/bs blocks][D/8][bs]   unit = 8 dims of one token
//         tensor:   [D/64][64 tokens][8]      unit (t, c) at chunk (c % 8) ^ (t % 8) of its row
//   V     "nhd":    [D/8][64 tokens]          unit = 8 dims of one token (ldmatrix.trans)
//         tensor:   as K, tensor              (ldmatrix.trans)
//         "vllm":   [8 groups][D]             unit = 8 tokens of one dim
//         bulk:     [64/bs blocks][D][bs]     8 tokens of one dim per ldmatrix row
//   Q     [D/8][ROWS]
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cstdint>

#include "attention/mma_sync.cuh"
#include "common/bulk_copy.cuh"
#include "common/pdl.cuh"
#include "common/types.cuh"

namespace ferrum::attn {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kStageTokens = 64;
constexpr int kMaxSplits = 256;
// Launches whose K/V (a host bound: sequences x kv heads x max_seq_len x D x 2 x 2 bytes) is at most
// this stream the keys read by one CTA alone evict-first (AttnParams::evict_first_kv). H100, cold
// L2: 67-134 MB decodes ran 5-12% faster so (the flush's dirty lines are not written back under
// the kernel), 0.5-2 GB decodes 1.5-3.5% slower.
constexpr int64_t kEvictFirstMaxBytes = int64_t{256} << 20;

// How a CTA finds its query rows.
enum TileMode : int {
  kTileDecode = 0,  // tile = sequence; one query row (the last position)
  kTileRow = 1,     // tile = packed query row; its sequence by binary search in cu_seqlens_q
  kTileList = 2,    // tile = entry of `tiles` (seq, first row, rows, q_len - first q index)
};

struct AttnParams {
  // TMA maps of the "nhd" caches as [tokens][kv heads][D] (valid when nhd_tma; the
  // kernel takes AttnParams as a __grid_constant__ parameter, so they stay in param space).
  CUtensorMap k_map, v_map;
  const void* q;
  void* out;
  float* part_out;  // [rows_total, H, num_splits, D] when num_splits > 1
  float* part_lse;  // [rows_total, H, num_splits] (log2 domain)
  const void* k_cache;
  const void* v_cache;
  const int* block_tables;
  const int* seq_lens;
  const int* cu_seqlens_q;  // kTileRow / kTileList
  const int4* tiles;        // kTileList
  int64_t q_row_stride, q_head_stride;      // elements
  int64_t out_row_stride, out_head_stride;  // elements
  int64_t k_block_stride, v_block_stride;   // elements per cache block
  int64_t bt_stride;
  int num_seqs, num_heads, num_kv_heads, group;
  int block_size, log2_block_size, max_blocks;
  int tokens_per_split, num_splits;
  int mode;
  bool vllm_layout;
  bool nhd_tma;
  bool evict_first_kv;  // see kEvictFirstMaxBytes
  float scale_log2;  // softmax scale * log2(e)
};

template <int D>
struct StageCfg {
  static constexpr int kStages = D >= 256 ? 2 : 3;
  static constexpr int kStageElems = kStageTokens * D;  // K (or V) elements per stage
  static constexpr int kUnits = kStageElems / 8;         // 16-byte units per stage tile
  static constexpr int kUnitsPerThread = kUnits / kThreads;
  static_assert(kUnits % kThreads == 0, "head_dim must be a multiple of 16");
};

// Dynamic shared memory of one CTA, in bytes: K and V stages, the Q tile, the
// warps' (m, l) and one mbarrier per stage.
template <int D, int MT>
constexpr int attn_smem_bytes() {
  return StageCfg<D>::kStages * 2 * StageCfg<D>::kStageElems * 2 + MT * 16 * D * 2 + kWarps * 16 * 2 * 4 +
         StageCfg<D>::kStages * 8;
}

// The sequence of packed query row `row`: the s with cu[s] <= row < cu[s + 1].
__device__ __forceinline__ int find_seq(const int* cu, int num_seqs, int row) {
  int lo = 0, hi = num_seqs - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) >> 1;
    if (__ldg(cu + mid) <= row) lo = mid; else hi = mid - 1;
  }
  return lo;
}

// Keys visible to a query at position `qpos`, clamped to what the block table
// and the splits can cover (so inconsistent inputs never read out of bounds).
__device__ __forceinline__ int visible_end(const AttnParams& p, int seq_len, int qpos) {
  int end = min(seq_len, qpos + 1);
  end = min(end, p.max_blocks << p.log2_block_size);
  end = min(end, p.tokens_per_split * p.num_splits);
  return max(end, 0);
}

// ---- the attention kernel --------------------------------------------------

// T: __half / __nv_bfloat16; D: head_dim; MT: m16 tiles of query rows
// (query tokens per CTA * group <= 16 * MT; the tokens per CTA come from the tile);
// kVllm: the cache layout (p.vllm_layout), compiled per layout to keep registers down.
template <typename T, int D, int MT, bool kVllm>
__global__ void __launch_bounds__(kThreads) paged_attention_kernel(const __grid_constant__ AttnParams p) {
  using Cfg = StageCfg<D>;
  constexpr int ROWS = MT * 16;
  constexpr int WN = kWarps / MT;           // warps splitting the tokens of a stage
  constexpr int TW = kStageTokens / WN;     // tokens per warp per stage
  constexpr int NT = TW / 8;                // S n-tiles per warp
  constexpr int KS = D / 16;                // k-steps over head_dim
  constexpr int DN = D / 8;                 // O n-tiles
  constexpr int CH = D / 8;                 // 16-byte chunks per row
  static_assert(kWarps % MT == 0, "MT must divide the warp count");

  extern __shared__ __align__(1024) uint8_t smem_raw[];  // 1024: the swizzle repeats every 8 rows of 128 B
  T* sK = reinterpret_cast<T*>(smem_raw);
  T* sV = sK + Cfg::kStages * Cfg::kStageElems;
  T* sQ = sV + Cfg::kStages * Cfg::kStageElems;
  float* sML = reinterpret_cast<float*>(sQ + ROWS * D);  // [kWarps][16][2]: m, l
  const uint32_t bar0 = smem_addr(sML + kWarps * 16 * 2);  // kStages mbarriers (bulk loads)

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int tile = blockIdx.x, split = blockIdx.y, kvh = blockIdx.z;
  pdl_wait();  // query, cache and tables come from earlier kernels

  const int bs = p.block_size, lbs = p.log2_block_size;
  // MT 4 keeps cp.async: its warps read every token of a stage, and the bulk V
  // tile's 2-way ldmatrix conflicts would make shared memory the bottleneck.
  const bool bulk = kBulkArch && MT <= 2 && (kVllm || (D % 64 == 0 && p.nhd_tma));
  const bool tensor = bulk && !kVllm;  // "nhd" through the tensor maps
  if (bulk) {
    if (tid == 0) {
      for (int b = 0; b < Cfg::kStages; ++b) mbar_init(bar0 + b * 8, 1);
      fence_mbar_init();
    }
    __syncthreads();
  }

  // ---- which query rows, which keys ----
  // Rows q_row0 .. q_row0 + n_q - 1 of sequence seq; the first sits q_back positions before its end.
  int seq, q_row0, n_q, q_back;
  bool sole_reader;  // no other CTA reads this (sequence, kv head)'s keys (see `hint` below)
  if (p.mode == kTileDecode) {
    seq = tile; q_row0 = tile; n_q = 1; q_back = 1;
    sole_reader = true;
  } else if (p.mode == kTileRow) {
    seq = find_seq(p.cu_seqlens_q, p.num_seqs, tile);
    const int c0 = __ldg(p.cu_seqlens_q + seq), c1 = __ldg(p.cu_seqlens_q + seq + 1);
    q_row0 = tile; n_q = 1; q_back = c1 - tile;
    sole_reader = c1 - c0 == 1;
  } else {
    const int4 e = p.tiles[tile];
    seq = e.x; q_row0 = e.y; n_q = e.z; q_back = e.w;
    if (n_q <= 0) return;  // padding entry of the tile list
    sole_reader = n_q == e.w && q_row0 == __ldg(p.cu_seqlens_q + seq);  // the tile holds all its sequence's rows
  }
  const int kv_begin = split * p.tokens_per_split;
  const int* bt = p.block_tables + static_cast<int64_t>(seq) * p.bt_stride;
  // Lane j: the block id of block j of the first stages, loaded before seq_len arrives (bounded
  // by the table's width only: the copies take the ids of blocks in the range alone), so the
  // first copies wait for one dependent load, not for seq_len, then the ids, then the Q tile.
  int first_bids[Cfg::kStages - 1];
#pragma unroll
  for (int s = 0; s < Cfg::kStages - 1; ++s) {
    const int blk = ((kv_begin + s * kStageTokens) >> lbs) + lane;
    first_bids[s] = (lane << lbs) < kStageTokens && blk < p.max_blocks ? __ldg(bt + blk) : 0;
  }
  const int seq_len = __ldg(p.seq_lens + seq);
  const int qpos0 = seq_len - q_back;
  const int kv_end = visible_end(p, seq_len, qpos0 + n_q - 1);
  // Splits past the end write nothing: the merge reads only ceil(end / tokens_per_split) of them.
  if (p.num_splits > 1 && kv_begin >= kv_end) return;
  const int range_end = min(kv_end, kv_begin + p.tokens_per_split);
  const int n_tok = max(range_end - kv_begin, 0);
  const int n_stages = (n_tok + kStageTokens - 1) / kStageTokens;
  const int valid_rows = n_q * p.group;

  // ---- K/V pipeline ----
  const T* kc = static_cast<const T*>(p.k_cache);
  const T* vc = static_cast<const T*>(p.v_cache);
  const int64_t head_off = kVllm ? static_cast<int64_t>(kvh) * D * bs : static_cast<int64_t>(kvh) * D;
  const int64_t tok_stride = static_cast<int64_t>(p.num_kv_heads) * D;  // "nhd": elements between tokens
  const uint32_t sK0 = smem_addr(sK), sV0 = smem_addr(sV), sQ0 = smem_addr(sQ);
  // Keys read by this CTA alone may stream evict-first (kEvictFirstMaxBytes); keys that other
  // tiles of the sequence read too keep the default policy, so they find them in L2.
  const L2Hint hint = l2_evict_first_if(sole_reader && p.evict_first_kv);

  // Lane j holds the block id of block j of stage s (0 where past the range).
  auto load_block_ids = [&](int s) -> int {
    const int tok = kv_begin + s * kStageTokens + (lane << lbs);
    return (s < n_stages && (lane << lbs) < kStageTokens && tok < range_end) ? __ldg(bt + (tok >> lbs)) : 0;
  };

  // Bulk loads (warp 0): lane j copies block j of the stage, K and V, if it
  // holds a token of the range; lane 0 announces the bytes on the stage's mbarrier.
  auto issue_stage_bulk = [&](int s, int bids) {
    const int buf = s % Cfg::kStages;
    const int valid = range_end - (kv_begin + s * kStageTokens);
    const uint32_t bytes = D * bs * 2, bar = bar0 + buf * 8;
    const bool mine = (lane << lbs) < min(valid, kStageTokens);
    const int n = __popc(__ballot_sync(0xffffffffu, mine));
    if (lane == 0) {
      fence_proxy_async_smem();  // the buffer's last readers and zeroing came before (__syncthreads)
      mbar_arrive_expect_tx(bar, 2 * n * bytes);
    }
    __syncwarp();
    if (mine && tensor) {
      const int tok = bids << lbs;  // first token of the block (the host checked tokens < 2^31)
#pragma unroll
      for (int h = 0; h < D / 64; ++h) {
        const uint32_t off = buf * Cfg::kStageElems * 2 + (h * kStageTokens + (lane << lbs)) * 128;
        tma_load_3d(sK0 + off, &p.k_map, h * 64, kvh, tok, bar, hint);
        tma_load_3d(sV0 + off, &p.v_map, h * 64, kvh, tok, bar, hint);
      }
    } else if (mine) {
      const int64_t bid = bids;
      bulk_copy_g2s(sK0 + buf * Cfg::kStageElems * 2 + lane * bytes, kc + bid * p.k_block_stride + head_off, bytes, bar,
                    hint);
      bulk_copy_g2s(sV0 + buf * Cfg::kStageElems * 2 + lane * bytes, vc + bid * p.v_block_stride + head_off, bytes, bar,
                    hint);
    }
  };

  auto issue_stage = [&](int s, int bids) {
    if (bulk) {
      if (warp == 0) issue_stage_bulk(s, bids);
      return;
    }
    const int buf = s % Cfg::kStages;
    const int valid = range_end - (kv_begin + s * kStageTokens);  // tokens of this stage in range
    const uint32_t dK = sK0 + buf * Cfg::kStageElems * 2, dV = sV0 + buf * Cfg::kStageElems * 2;
#pragma unroll
    for (int i = 0; i < Cfg::kUnitsPerThread; ++i) {
      const int u = tid + i * kThreads;
      if (kVllm) {
        {  // K [nb, kvh, D/8, bs, 8]: unit u = (chunk u / 64, token u % 64), smem unit u
          const int t = u % kStageTokens, c = u / kStageTokens;
          const int64_t bid = __shfl_sync(0xffffffffu, bids, t >> lbs);
          const T* src = kc + bid * p.k_block_stride + head_off + (static_cast<int64_t>(c) * bs + (t & (bs - 1))) * 8;
          cp_async_16(dK + u * 16, src, t < valid);
        }
        {  // V [nb, kvh, D, bs]: unit = (group g of 8 tokens, dim d), smem [g][D]
          const int g = (u >> 3) & 7, d = (u >> 6) * 8 + (u & 7), t = g * 8;
          const int64_t bid = __shfl_sync(0xffffffffu, bids, t >> lbs);
          const T* src = vc + bid * p.v_block_stride + head_off + static_cast<int64_t>(d) * bs + (t & (bs - 1));
          cp_async_16(dV + (g * D + d) * 16, src, t < valid);
        }
      } else {
        // K and V [nb, bs, kvh, D]: unit = (token t, chunk c), lanes 8 tokens x 4 chunks; smem [c][64]
        const int c = (u >> 3) % CH, t = (u / D) * 8 + (u & 7);
        const int64_t bid = __shfl_sync(0xffffffffu, bids, t >> lbs);
        const int64_t off = (t & (bs - 1)) * tok_stride + head_off + c * 8;
        const uint32_t soff = (c * kStageTokens + t) * 16;
        cp_async_16(dK + soff, kc + bid * p.k_block_stride + off, t < valid);
        cp_async_16(dV + soff, vc + bid * p.v_block_stride + off, t < valid);
      }
    }
  };

  // ---- per-warp state ----
  const int mt = warp / WN, wn = warp % WN;
  const int r0 = lane >> 2;                 // rows r0 and r0 + 8 of m-tile mt
  int limit[2];                             // keys at positions >= limit are masked, per row
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int r = mt * 16 + r0 + h * 8;
    const int qt = r < valid_rows ? r / p.group : n_q - 1;
    limit[h] = min(range_end, visible_end(p, seq_len, qpos0 + qt));
  }
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.f, 0.f};
  float o[DN][4];
#pragma unroll
  for (int i = 0; i < DN; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;

#pragma unroll
  for (int s = 0; s < Cfg::kStages - 1; ++s) {
    if (s < n_stages) issue_stage(s, first_bids[s]);
    cp_async_commit();
  }
  int bids = load_block_ids(Cfg::kStages - 1);

  // ---- Q tile into shared memory (zero rows past the group / the tile), while the copies fly ----
#pragma unroll
  for (int u = tid; u < ROWS * CH; u += kThreads) {
    const int c = u % CH, r = u / CH;
    uint4 val = make_uint4(0, 0, 0, 0);
    if (r < valid_rows) {
      const int qt = r / p.group, g = r % p.group;
      const T* src = static_cast<const T*>(p.q) + static_cast<int64_t>(q_row0 + qt) * p.q_row_stride +
                     static_cast<int64_t>(kvh * p.group + g) * p.q_head_stride + c * 8;
      val = *reinterpret_cast<const uint4*>(src);
    }
    *reinterpret_cast<uint4*>(sQ + (c * ROWS + r) * 8) = val;
  }

  // Q is the same for every stage: at head_dim <= 128 and one m-tile its A
  // fragments stay in registers (KS x 4), saving KS ldmatrix per warp per
  // stage; larger heads and m-tiles would spill, and reload them each stage.
  constexpr bool kQInRegs = D <= 128 && MT == 1;
  const int mi = lane >> 3, li = lane & 7;
  // 16-byte unit of (token t of the stage, 8-dim chunk c) in a K tile, or an "nhd" V tile.
  auto kv_unit = [&](int t, int c) -> int {
    if (tensor) return ((c >> 3) * kStageTokens + t) * 8 + ((c & 7) ^ (t & 7));
    if (bulk) return (((t >> lbs) * CH + c) << lbs) + (t & (bs - 1));
    return c * kStageTokens + t;
  };
  auto q_addr = [&](int kk) { return sQ0 + ((2 * kk + (mi >> 1)) * ROWS + mt * 16 + (mi & 1) * 8 + li) * 16; };
  uint32_t qa[kQInRegs ? KS : 1][4];
  if constexpr (kQInRegs) {
    __syncthreads();  // the Q tile is in shared memory
#pragma unroll
    for (int kk = 0; kk < KS; ++kk) ldsm_x4(qa[kk], q_addr(kk));
  }

  for (int s = 0; s < n_stages; ++s) {
    cp_async_wait<Cfg::kStages - 2>();
    if (bulk) mbar_wait(bar0 + (s % Cfg::kStages) * 8, (s / Cfg::kStages) & 1);
    __syncthreads();  // stage s visible to all; everyone is done with stage s - 1's buffer
    {
      const int next = s + Cfg::kStages - 1;
      if (next < n_stages) issue_stage(next, bids);
      cp_async_commit();
      bids = load_block_ids(next + 1);
    }
    const int buf = s % Cfg::kStages;
    const int tok0 = kv_begin + s * kStageTokens;
    const int valid = range_end - tok0;
    // Zero V past the range (the cache may hold NaN there, and 0 * NaN would
    // poison P V): bulk loads leave a block's tail and stale buffers there; a
    // cp.async "vllm" unit holds 8 tokens, so only the tail of the partial one.
    if (bulk && valid < kStageTokens) {
      T* v = sV + buf * Cfg::kStageElems;
      for (int i = tid; i < Cfg::kStageElems; i += kThreads) {
        const int t = tensor ? (i >> 6) & (kStageTokens - 1) : ((i / (D * bs)) << lbs) + (i & (bs - 1));
        if (t >= valid) v[i] = from_float<T>(0.f);
      }
      __syncthreads();
    } else if (!bulk && kVllm && valid < kStageTokens && (valid & 7)) {
      T* v = sV + buf * Cfg::kStageElems + (valid >> 3) * D * 8;
      for (int i = tid; i < D * 8; i += kThreads)
        if ((i & 7) >= (valid & 7)) v[i] = from_float<T>(0.f);
      __syncthreads();
    }

    if (mt * 16 >= valid_rows) continue;  // this warp's m-tile holds no query row (warp-uniform)

    // S = Q K^T for this warp's TW tokens.
    float sc[NT][4];
#pragma unroll
    for (int n = 0; n < NT; ++n) sc[n][0] = sc[n][1] = sc[n][2] = sc[n][3] = 0.f;
    const uint32_t kbase = sK0 + buf * Cfg::kStageElems * 2;
#pragma unroll
    for (int kk = 0; kk < KS; ++kk) {
      uint32_t a[4];
      if constexpr (kQInRegs) {
#pragma unroll
        for (int r = 0; r < 4; ++r) a[r] = qa[kk][r];
      } else {
        ldsm_x4(a, q_addr(kk));
      }
#pragma unroll
      for (int j = 0; j < NT / 2; ++j) {
        uint32_t b[4];
        const int t = wn * TW + j * 16 + (mi >> 1) * 8 + li;
        const int c = 2 * kk + (mi & 1);
        ldsm_x4(b, kbase + kv_unit(t, c) * 16);
        mma_16816<T>(sc[2 * j], a, b[0], b[1]);
        mma_16816<T>(sc[2 * j + 1], a, b[2], b[3]);
      }
    }

    // Online softmax (log2 domain), rows r0 (h = 0) and r0 + 8 (h = 1).
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float mx = -INFINITY;
#pragma unroll
      for (int n = 0; n < NT; ++n) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int pos = tok0 + wn * TW + n * 8 + (lane & 3) * 2 + e;
          float& x = sc[n][h * 2 + e];
          x = pos < limit[h] ? x * p.scale_log2 : -INFINITY;
          mx = fmaxf(mx, x);
        }
      }
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float m_new = fmaxf(m_run[h], mx);
      const float base = m_new == -INFINITY ? 0.f : m_new;
      const float alpha = fast_exp2(m_run[h] - base);
      float sum = 0.f;
#pragma unroll
      for (int n = 0; n < NT; ++n) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float& x = sc[n][h * 2 + e];
          x = fast_exp2(x - base);
          sum += x;
        }
      }
      l_run[h] = l_run[h] * alpha + sum;
      m_run[h] = m_new;
#pragma unroll
      for (int i = 0; i < DN; ++i) {
        o[i][h * 2] *= alpha;
        o[i][h * 2 + 1] *= alpha;
      }
    }

    // O += P V.
    const uint32_t vbase = sV0 + buf * Cfg::kStageElems * 2;
#pragma unroll
    for (int j = 0; j < TW / 16; ++j) {
      uint32_t pa[4];
      pa[0] = pack2<T>(sc[2 * j][0], sc[2 * j][1]);
      pa[1] = pack2<T>(sc[2 * j][2], sc[2 * j][3]);
      pa[2] = pack2<T>(sc[2 * j + 1][0], sc[2 * j + 1][1]);
      pa[3] = pack2<T>(sc[2 * j + 1][2], sc[2 * j + 1][3]);
      const int t0 = wn * TW + j * 16;
#pragma unroll
      for (int dp = 0; dp < DN / 2; ++dp) {
        uint32_t b[4];
        if (bulk && !tensor) {
          const int d = dp * 16 + (mi >> 1) * 8 + li, t = t0 + (mi & 1) * 8;
          ldsm_x4(b, vbase + ((((t >> lbs) * D + d) << lbs) + (t & (bs - 1))) * 2);
        } else if (kVllm) {
          const int d = dp * 16 + (mi >> 1) * 8 + li, g = (t0 >> 3) + (mi & 1);
          ldsm_x4(b, vbase + (g * D + d) * 16);
        } else {
          const int t = t0 + (mi & 1) * 8 + li, c = 2 * dp + (mi >> 1);
          ldsm_x4_trans(b, vbase + kv_unit(t, c) * 16);
        }
        mma_16816<T>(o[2 * dp], pa, b[0], b[1]);
        mma_16816<T>(o[2 * dp + 1], pa, b[2], b[3]);
      }
    }
  }
  cp_async_wait<0>();
  pdl_launch_dependents();
  __syncthreads();  // the stage buffers become the combine area

  // ---- combine the WN warps of each m-tile, normalise, write ----
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    l_run[h] += __shfl_xor_sync(0xffffffffu, l_run[h], 1);
    l_run[h] += __shfl_xor_sync(0xffffffffu, l_run[h], 2);
  }
  float* sO = reinterpret_cast<float*>(smem_raw);  // [kWarps][16][D]
  {
    float* mine = sO + warp * 16 * D;
#pragma unroll
    for (int i = 0; i < DN; ++i) {
      const int col = i * 8 + (lane & 3) * 2;
      *reinterpret_cast<float2*>(mine + r0 * D + col) = make_float2(o[i][0], o[i][1]);
      *reinterpret_cast<float2*>(mine + (r0 + 8) * D + col) = make_float2(o[i][2], o[i][3]);
    }
    if ((lane & 3) == 0) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        sML[(warp * 16 + r0 + h * 8) * 2] = m_run[h];
        sML[(warp * 16 + r0 + h * 8) * 2 + 1] = l_run[h];
      }
    }
  }
  __syncthreads();

  for (int it = tid; it < valid_rows * (D / 4); it += kThreads) {
    const int r = it / (D / 4), d = (it % (D / 4)) * 4;
    const int rmt = r / 16, rr = r % 16;
    float M = -INFINITY;
#pragma unroll
    for (int w = 0; w < WN; ++w) M = fmaxf(M, sML[((rmt * WN + w) * 16 + rr) * 2]);
    const float base = M == -INFINITY ? 0.f : M;
    float L = 0.f;
    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
    for (int w = 0; w < WN; ++w) {
      const int ww = rmt * WN + w;
      const float sc = fast_exp2(sML[(ww * 16 + rr) * 2] - base);
      L += sML[(ww * 16 + rr) * 2 + 1] * sc;
      const float4 x = *reinterpret_cast<const float4*>(sO + (ww * 16 + rr) * D + d);
      acc.x += x.x * sc; acc.y += x.y * sc; acc.z += x.z * sc; acc.w += x.w * sc;
    }
    const float inv = L > 0.f ? 1.f / L : 0.f;
    acc.x *= inv; acc.y *= inv; acc.z *= inv; acc.w *= inv;
    const int qt = r / p.group, head = kvh * p.group + r % p.group;
    const int64_t row = q_row0 + qt;
    if (p.num_splits == 1) {
      T* dst = static_cast<T*>(p.out) + row * p.out_row_stride + head * p.out_head_stride + d;
      Packed<T, 4> v;
      v.v[0] = from_float<T>(acc.x); v.v[1] = from_float<T>(acc.y);
      v.v[2] = from_float<T>(acc.z); v.v[3] = from_float<T>(acc.w);
      store_packed<T, 4>(dst, v);
    } else {
      const int64_t prow = (row * p.num_heads + head) * p.num_splits + split;
      *reinterpret_cast<float4*>(p.part_out + prow * D + d) = acc;
      if (d == 0) p.part_lse[prow] = L > 0.f ? base + __log2f(L) : -INFINITY;
    }
  }
}

// ---- split-K merge ---------------------------------------------------------

constexpr int kMergeThreads = 256;

// One CTA per (query row, head): out = sum_j w_j O_j / sum_j w_j with
// w_j = exp2(lse_j - max lse) over the splits that hold keys of the row.
// Thread (group g, lane q) owns float4 q of the row and splits g, g + G, ...;
// it loads kMergeBatch of them (partial and lse together) before combining
// them with a running max, so a row costs one round trip to L2, not one per
// pass over the splits; the G groups are then combined through shared memory.
template <typename T, int D>
__global__ void __launch_bounds__(kMergeThreads) merge_splits_kernel(const AttnParams p) {
  constexpr int Q = D / 4;                   // float4 lanes per row
  constexpr int G = kMergeThreads / Q;       // groups of splits walked in parallel
  constexpr int kMergeBatch = 8;
  __shared__ float4 s_acc[G * Q];
  __shared__ float s_m[G], s_w[G];
  const int row = blockIdx.x, head = blockIdx.y, tid = threadIdx.x;
  const int q = tid % Q, grp = tid / Q;
  // seq_lens and cu_seqlens_q were final before the attention kernel passed its own wait, so
  // they are read before ours (common/pdl_launch.h): one round trip less after it ends.
  int seq, qpos;
  if (p.mode == kTileDecode) {
    seq = row;
    qpos = __ldg(p.seq_lens + seq) - 1;
  } else {
    seq = find_seq(p.cu_seqlens_q, p.num_seqs, row);
    const int c0 = __ldg(p.cu_seqlens_q + seq), c1 = __ldg(p.cu_seqlens_q + seq + 1);
    qpos = __ldg(p.seq_lens + seq) - (c1 - c0) + (row - c0);
  }
  const int end = visible_end(p, __ldg(p.seq_lens + seq), qpos);
  pdl_wait();  // the partials come from the attention kernel launched just before
  const int n = min((end + p.tokens_per_split - 1) / p.tokens_per_split, p.num_splits);
  const int64_t prow = (static_cast<int64_t>(row) * p.num_heads + head) * p.num_splits;

  float m = -INFINITY, wsum = 0.f;  // running max and sum of weights, scaled by exp2(-m)
  float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
  if (grp < G) {
    for (int j0 = grp; j0 < n; j0 += G * kMergeBatch) {
      float lse[kMergeBatch];
      float4 x[kMergeBatch];
#pragma unroll
      for (int b = 0; b < kMergeBatch; ++b) {
        const int j = j0 + b * G;
        lse[b] = j < n ? p.part_lse[prow + j] : -INFINITY;
        x[b] = j < n ? *reinterpret_cast<const float4*>(p.part_out + (prow + j) * D + q * 4)
                     : make_float4(0.f, 0.f, 0.f, 0.f);
      }
      float m_new = m;
#pragma unroll
      for (int b = 0; b < kMergeBatch; ++b) m_new = fmaxf(m_new, lse[b]);
      if (m_new == -INFINITY) continue;  // no keys in these splits
      const float r = fast_exp2(m - m_new);
      acc.x *= r; acc.y *= r; acc.z *= r; acc.w *= r;
      wsum *= r;
#pragma unroll
      for (int b = 0; b < kMergeBatch; ++b) {
        const float w = fast_exp2(lse[b] - m_new);
        acc.x += w * x[b].x; acc.y += w * x[b].y; acc.z += w * x[b].z; acc.w += w * x[b].w;
        wsum += w;
      }
      m = m_new;
    }
    s_acc[grp * Q + q] = acc;
    if (q == 0) {
      s_m[grp] = m;
      s_w[grp] = wsum;
    }
  }
  __syncthreads();
  if (tid < Q) {
    float M = -INFINITY;
#pragma unroll
    for (int g = 0; g < G; ++g) M = fmaxf(M, s_m[g]);
    float W = 0.f;
    acc = make_float4(0.f, 0.f, 0.f, 0.f);
    if (M != -INFINITY) {
#pragma unroll
      for (int g = 0; g < G; ++g) {
        const float r = fast_exp2(s_m[g] - M);
        const float4 x = s_acc[g * Q + tid];
        acc.x += r * x.x; acc.y += r * x.y; acc.z += r * x.z; acc.w += r * x.w;
        W += r * s_w[g];
      }
    }
    const float inv = W > 0.f ? 1.f / W : 0.f;
    Packed<T, 4> v;
    v.v[0] = from_float<T>(acc.x * inv); v.v[1] = from_float<T>(acc.y * inv);
    v.v[2] = from_float<T>(acc.z * inv); v.v[3] = from_float<T>(acc.w * inv);
    store_packed<T, 4>(static_cast<T*>(p.out) + row * p.out_row_stride + head * p.out_head_stride + tid * 4, v);
  }
}

}  // namespace ferrum::attn
