// Paged attention decode, second kernel ("v2"): one query token per sequence
// (or one packed varlen row), built for bytes in flight and few instructions
// per byte. The first kernel (paged_attention.cuh, "v1") stays selectable.
//
// One CTA (4 warps) owns (sequence, kv head, split); its 16 query rows are the
// `group` heads of the kv head (rows >= group are zero). K/V stream through a
// kStages-deep cp.async pipeline of ST-token stages:
//   D <= 128: ST = 32, warps = 2 along tokens x 2 along head_dim
//   D == 256: ST = 16, warps = 1 along tokens x 4 along head_dim
// Every warp computes S = Q K^T for its 16 tokens over the whole head_dim (the
// warps sharing tokens compute the same S: a few redundant mma, no exchange),
// then O += P V only for its share of head_dim, so O is D / (4 / WT) / 8 x 4
// fp32 registers (32 at D = 128, half of v1). At the end the WT token groups
// merge (m, l, O) through shared memory.
//
// Shared memory per CTA (bf16/fp16): stages x 2 x ST x D x 2 B + Q 16 x D x 2 B
//   D 64: 6 x 8 KiB + 2 KiB; D 96: 4 x 12 KiB + 3 KiB; D 128: 3 x 16 KiB + 4 KiB;
//   D 256: 3 x 16 KiB + 8 KiB. So 4 CTAs (16 warps) per SM at D <= 128 (3 at
//   256, <= 128 registers per thread), each with kStages - 1 stages in flight:
//   ~128 KiB outstanding per SM at D = 128, against the ~30-40 KiB that 3 TB/s
//   x ~1 us of DRAM latency needs per SM.
//
// Loads: each thread owns fixed 16-byte units of every stage, chosen so that
// all its units of one operand lie in ONE cache block: per stage a thread reads
// one (vllm: two) block-table entries itself (one stage ahead, no shuffles),
// forms one 64-bit base pointer per operand, and issues its cp.async at
// constant strides from it:
//   "vllm" K [nb, kvh, D/8, bs, 8]: token t = tid % ST, chunks tid / ST + i * 128 / ST
//   "vllm" V [nb, kvh, D, bs]:      8-token group g = (tid / 8) % (ST / 8), dims
//                                   (tid / 8) / (ST / 8) * 8 + tid % 8 + i * 8 * 128 / ST
//   "nhd" K, V [nb, bs, kvh, D]:   chunk c = tid % (D / 8), tokens (tid / (D / 8)) * TPT + j
//     (a warp instruction covers whole 128-512 B rows of a token).
// Napkin math (H100, h128, bf16, 32 tokens = 16 KiB per stage): per warp per
// stage ~50 instructions of loads, 8 ldmatrix + 16 mma for S, 4 + 8 for P V,
// ~60 of softmax; at ~13 B/clk per SM a stage lasts ~1250 clk, and the 4
// warps x ~200 instructions fill ~16% of the SM's issue slots.
//
// Shared-memory tiles (16-byte units):
//   K, V "nhd": [D/8][ST], unit (token t, chunk c) at c * ST + (t ^ (c & 7))
//               (the xor keeps both the cp.async rows of a quarter-warp and the
//               8 ldmatrix rows conflict-free)
//   V "vllm":   [ST/8][D], unit (8-token group g, dim d) at g * D + d
//   Q:          [D/8][16], unit (row r, chunk c) at c * 16 + r
#pragma once

#include "attention/paged_attention.cuh"

namespace ferrum::attn::decode {

constexpr int kThreads = 128;
constexpr int kWarps = 4;
constexpr int kRows = 16;  // query rows of the CTA (one m16 tile; group <= 16)

template <int D>
struct Cfg {
  static constexpr int WT = D >= 256 ? 1 : 2;  // warps along tokens
  static constexpr int WD = kWarps / WT;       // warps along head_dim (P V)
  static constexpr int ST = 16 * WT;           // tokens per stage
  static constexpr int CH = D / 8;             // 16-byte chunks per token row
  static constexpr int KS = D / 16;            // k-steps of S
  static constexpr int DW = D / WD;            // head_dim columns of O per warp
  static constexpr int DNW = DW / 8;           // O n-tiles per warp
  static constexpr int kStages = D <= 64 ? 6 : (D <= 96 ? 4 : 3);
  static constexpr int kStageBytes = ST * D * 2;  // K (or V) bytes of one stage
  // "vllm" K: units per thread; "vllm" V: 8-token groups per stage, units per thread
  static constexpr int KU = CH * ST / kThreads;
  static constexpr int G = ST / 8;
  static constexpr int VU = D * G / kThreads;
  // "nhd": rows loaded per pass (power of two <= threads / CH), tokens per thread
  static constexpr int RS = (kThreads / CH) >= 16 ? 16 : ((kThreads / CH) >= 8 ? 8 : 4);
  static constexpr int TPT = ST / RS;
  static constexpr int kLoaders = RS * CH;  // threads that load in "nhd" (96 at D = 96)
  static constexpr int kMinBlocks = D >= 256 ? 3 : 4;
  static constexpr bool kQInRegs = D <= 128;
  static_assert(DNW % 2 == 0, "P V walks pairs of n-tiles");
  static_assert(KU * kThreads == CH * ST && VU * kThreads == D * G, "stage must split evenly over threads");
  static_assert(TPT * RS == ST && TPT <= 8, "nhd rows of a thread must stay in one block (bs >= 8)");
  static_assert(WT * DW * 16 * 4 <= kStages * 2 * kStageBytes, "combine area must fit in the stage buffers");
};

template <int D>
constexpr int smem_bytes() {
  using C = Cfg<D>;
  return C::kStages * 2 * C::kStageBytes + kRows * D * 2 + kWarps * kRows * 2 * 4;
}

// Programmatic dependent launch (sm_90): the merge is launched while the attention
// grid still runs and waits here for its results; launch_dependents lets it start early.
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::);
#endif
}

__device__ __forceinline__ void cp_async_16_l2_256(uint32_t dst, const void* src, bool valid) {
  const int n = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global.L2::256B [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(n));
}

// T: __half / __nv_bfloat16; D: head_dim; VLLM: cache layout. Grid: rows x splits x kv_heads
// CTAs in one dimension, kv head fastest.
// p.mode: kTileDecode (row = sequence, query at seq_len - 1) or kTileRow (packed varlen row).
template <typename T, int D, bool VLLM>
__global__ void __launch_bounds__(kThreads, Cfg<D>::kMinBlocks) paged_decode_kernel(const AttnParams p) {
  using C = Cfg<D>;
  constexpr int ST = C::ST, CH = C::CH, KS = C::KS, DNW = C::DNW;

  extern __shared__ __align__(128) uint8_t smem_raw[];
  const uint32_t sK0 = smem_addr(smem_raw);
  const uint32_t sV0 = sK0 + C::kStages * C::kStageBytes;
  T* sQ = reinterpret_cast<T*>(smem_raw + 2 * C::kStages * C::kStageBytes);
  const uint32_t sQ0 = smem_addr(sQ);
  float* sML = reinterpret_cast<float*>(sQ + kRows * D);  // [WT][16][2]: m, l

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  // 1-D grid, kv head fastest: the kv heads of one (row, split) run side by side and read
  // the same cache blocks at about the same time ("nhd": the same token rows) -> DRAM page hits.
  const int kvh = static_cast<int>(blockIdx.x % p.num_kv_heads);
  const int rs = static_cast<int>(blockIdx.x / p.num_kv_heads);
  const int split = rs % p.num_splits, row = rs / p.num_splits;
  pdl_launch_dependents();  // the merge (if any) may be scheduled; it waits for this grid to finish

  // ---- which sequence ----
  int seq, c_lo = 0, c_hi = 0;
  if (p.mode == kTileDecode) {
    seq = row;
  } else {
    seq = find_seq(p.cu_seqlens_q, p.num_seqs, row);
    c_lo = __ldg(p.cu_seqlens_q + seq);
    c_hi = __ldg(p.cu_seqlens_q + seq + 1);
  }
  const int group = p.group;
  const int kv_begin = split * p.tokens_per_split;

  // ---- Q tile: cp.async into shared memory (rows >= group zero-filled), part of the
  // first commit group, so its latency overlaps the block-table and first K/V reads ----
  for (int u = tid; u < kRows * CH; u += kThreads) {
    const int c = u % CH, r = u / CH;
    const T* src = static_cast<const T*>(p.q);
    if (r < group)
      src += static_cast<int64_t>(row) * p.q_row_stride + static_cast<int64_t>(kvh * group + r) * p.q_head_stride +
             c * 8;
    cp_async_16(sQ0 + (c * kRows + r) * 16, src, r < group);
  }

  // ---- per-thread load geometry (constant over stages) ----
  const int bs = p.block_size, lbs = p.log2_block_size;
  const int* bt = p.block_tables + static_cast<int64_t>(seq) * p.bt_stride;
  const char* kc = static_cast<const char*>(p.k_cache);
  const char* vc = static_cast<const char*>(p.v_cache);
  const int64_t kbs = p.k_block_stride * 2, vbs = p.v_block_stride * 2;  // bytes per cache block
  // tokK / tokV: the stage token whose block holds all of this thread's K / V units
  int tokK, tokV;
  int64_t koff, voff;     // byte offset of unit 0 inside a cache block (head included)
  int64_t kstep, vstep;   // bytes between consecutive units (vllm) or tokens (nhd)
  int64_t ktok, vtok;     // bytes between consecutive tokens inside a block
  uint32_t sv_off = 0;    // "vllm" V: smem byte offset of unit 0 inside a stage buffer
  bool loader = true;
  if constexpr (VLLM) {
    const int64_t head = static_cast<int64_t>(kvh) * D * bs * 2;
    tokK = tid % ST;
    const int c0 = tid / ST;
    koff = head + static_cast<int64_t>(c0 * bs + (tokK & (bs - 1))) * 16;
    kstep = static_cast<int64_t>(kThreads / ST) * bs * 16;
    const int g = (tid >> 3) % C::G, d0 = ((tid >> 3) / C::G) * 8 + (tid & 7);
    tokV = g * 8;
    voff = head + (static_cast<int64_t>(d0) * bs + (tokV & (bs - 1))) * 2;
    vstep = static_cast<int64_t>(8 * kThreads / ST) * bs * 2;
    ktok = 16;
    vtok = 2;
    sv_off = (g * D + d0) * 16;
  } else {
    const int c = tid % CH, r = tid / CH;
    loader = tid < C::kLoaders;
    tokK = tokV = loader ? r * C::TPT : 0;
    const int64_t tok_stride = static_cast<int64_t>(p.num_kv_heads) * D * 2;
    koff = voff = static_cast<int64_t>(tokK & (bs - 1)) * tok_stride + static_cast<int64_t>(kvh) * D * 2 + c * 16;
    kstep = vstep = tok_stride;
    ktok = vtok = tok_stride;
  }

  // Block ids of the prologue stages, read before seq_len is known (bounded only by the
  // block-table row and the split; entries past the range are replaced by 0 once it is known).
  constexpr int kPro = C::kStages - 1;
  int pro_k[kPro], pro_v[kPro];
  {
    const int spec_end = min(p.max_blocks << lbs, kv_begin + p.tokens_per_split);
#pragma unroll
    for (int s = 0; s < kPro; ++s) {
      const int tk = kv_begin + s * ST + tokK, tv = kv_begin + s * ST + tokV;
      pro_k[s] = tk < spec_end ? __ldg(bt + (tk >> lbs)) : 0;
      pro_v[s] = VLLM ? (tv < spec_end ? __ldg(bt + (tv >> lbs)) : 0) : pro_k[s];
    }
  }

  // ---- which keys ----
  const int seq_len = __ldg(p.seq_lens + seq);
  const int qpos = p.mode == kTileDecode ? seq_len - 1 : seq_len - (c_hi - c_lo) + (row - c_lo);
  const int kv_end = visible_end(p, seq_len, qpos);
  if (p.num_splits > 1 && kv_begin >= kv_end) {  // the merge reads only the splits that hold keys
    cp_async_wait<0>();  // no copy into shared memory outlives the CTA
    return;
  }
  const int range_end = min(kv_end, kv_begin + p.tokens_per_split);
  const int n_tok = max(range_end - kv_begin, 0);
  const int n_stages = (n_tok + ST - 1) / ST;

  // Block ids of stage s for this thread's K and V units (0 past the range: never dereferenced).
  auto load_bid = [&](int s, int tok) -> int {
    const int t = kv_begin + s * ST + tok;
    return (s < n_stages && t < range_end) ? __ldg(bt + (t >> lbs)) : 0;
  };

  auto issue = [&](int s, int bidK, int bidV) {
    const int buf = s % C::kStages;
    const int valid = range_end - (kv_begin + s * ST);  // tokens of this stage in range
    const uint32_t dK = sK0 + buf * C::kStageBytes, dV = sV0 + buf * C::kStageBytes;
    const char* gk = kc + static_cast<int64_t>(bidK) * kbs + koff;
    const char* gv = vc + static_cast<int64_t>(bidV) * vbs + voff;
    if constexpr (ST < 32) {
      // A stage may start inside a block (ST = 16 < block_size 32): add its offset there.
      const int sb = (kv_begin + s * ST) & (bs - 1);
      gk += sb * ktok;
      gv += sb * vtok;
    }
    if constexpr (VLLM) {
      const int c0 = tid / ST;
#pragma unroll
      for (int i = 0; i < C::KU; ++i) {
        const int c = c0 + i * (kThreads / ST);
        cp_async_16(dK + (c * ST + (tokK ^ (c & 7))) * 16, gk + i * kstep, tokK < valid);
      }
#pragma unroll
      for (int i = 0; i < C::VU; ++i)
        cp_async_16(dV + sv_off + i * (8 * kThreads / ST) * 16, gv + i * vstep, tokV < valid);
    } else {
      if (loader) {
        const int c = tid % CH;
#pragma unroll
        for (int j = 0; j < C::TPT; ++j) {
          const int t = tokK + j;
          const uint32_t so = (c * ST + (t ^ (c & 7))) * 16;
          if constexpr (D >= 128) {
            cp_async_16_l2_256(dK + so, gk + j * kstep, t < valid);
            cp_async_16_l2_256(dV + so, gv + j * vstep, t < valid);
          } else {
            cp_async_16(dK + so, gk + j * kstep, t < valid);
            cp_async_16(dV + so, gv + j * vstep, t < valid);
          }
        }
      }
    }
  };

  // ---- per-warp state ----
  const int tw = warp % C::WT, dh = warp / C::WT;
  const int r0 = lane >> 2;  // accumulator rows r0 and r0 + 8
  const int mi = lane >> 3, li = lane & 7;
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.f, 0.f};
  float o[DNW][4];
#pragma unroll
  for (int i = 0; i < DNW; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;

  // ---- pipeline prologue (commit group 0 also holds the Q tile) ----
#pragma unroll
  for (int s = 0; s < kPro; ++s) {
    // entries past the range (maybe garbage in the table) never even form a pointer
    const int tk = kv_begin + s * ST + tokK, tv = kv_begin + s * ST + tokV;
    if (s < n_stages) issue(s, tk < range_end ? pro_k[s] : 0, tv < range_end ? pro_v[s] : 0);
    cp_async_commit();
  }
  int bidK = load_bid(kPro, tokK), bidV = VLLM ? load_bid(kPro, tokV) : bidK;

  auto q_addr = [&](int kk) { return sQ0 + ((2 * kk + (mi >> 1)) * kRows + (mi & 1) * 8 + li) * 16; };
  uint32_t qa[C::kQInRegs ? KS : 1][4];

  // ldmatrix row of this lane: K (and V "nhd") token and the xor of its swizzle.
  const int tS = tw * 16 + (mi >> 1) * 8 + li;     // S: token of matrices (mi >> 1)
  const int tP = tw * 16 + (mi & 1) * 8 + li;      // P V ("nhd", .trans): token of matrices (mi & 1)
  const int cv0 = dh * (C::DW / 8);                 // first O chunk of this warp

  for (int s = 0; s < n_stages; ++s) {
    cp_async_wait<C::kStages - 2>();
    const int buf = s % C::kStages;
    const int tok0 = kv_begin + s * ST;
    const int valid = range_end - tok0;
    if constexpr (VLLM) {
      // A "vllm" V unit holds 8 tokens; the one straddling the end of the range
      // holds cache slots past it (maybe NaN, and 0 * NaN poisons P V). The thread
      // that loaded it zeroes its tail (its own cp.async group is complete).
      if (valid < ST && (valid & 7) && tokV == (valid & ~7)) {
        const int keep = valid & 7;
#pragma unroll
        for (int i = 0; i < C::VU; ++i) {
          T* u = reinterpret_cast<T*>(smem_raw + C::kStages * C::kStageBytes + buf * C::kStageBytes + sv_off +
                                      i * (8 * kThreads / ST) * 16);
#pragma unroll
          for (int e = 0; e < 8; ++e)
            if (e >= keep) u[e] = from_float<T>(0.f);
        }
      }
    }
    __syncthreads();  // stage s visible to all; everyone is done with stage s - 1's buffer
    if constexpr (C::kQInRegs) {
      if (s == 0) {  // the Q tile arrived with stage 0: its mma fragments stay in registers
#pragma unroll
        for (int kk = 0; kk < KS; ++kk) ldsm_x4(qa[kk], q_addr(kk));
      }
    }
    {
      const int next = s + C::kStages - 1;
      if (next < n_stages) issue(next, bidK, bidV);
      cp_async_commit();
      bidK = load_bid(next + 1, tokK);
      bidV = VLLM ? load_bid(next + 1, tokV) : bidK;
    }

    // S = Q K^T for this warp's 16 tokens.
    float sc[2][4];
#pragma unroll
    for (int n = 0; n < 2; ++n) sc[n][0] = sc[n][1] = sc[n][2] = sc[n][3] = 0.f;
    const uint32_t kbase = sK0 + buf * C::kStageBytes;
#pragma unroll
    for (int kk = 0; kk < KS; ++kk) {
      uint32_t a[4];
      if constexpr (C::kQInRegs) {
#pragma unroll
        for (int r = 0; r < 4; ++r) a[r] = qa[kk][r];
      } else {
        ldsm_x4(a, q_addr(kk));
      }
      const int c = 2 * kk + (mi & 1);
      uint32_t b[4];
      ldsm_x4(b, kbase + (c * ST + (tS ^ (c & 7))) * 16);
      mma_16816<T>(sc[0], a, b[0], b[1]);
      mma_16816<T>(sc[1], a, b[2], b[3]);
    }

    // Online softmax (log2 domain), rows r0 (h = 0) and r0 + 8 (h = 1).
    const bool partial = valid < ST;
    float alpha[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float mx = -INFINITY;
#pragma unroll
      for (int n = 0; n < 2; ++n) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float& x = sc[n][h * 2 + e];
          x *= p.scale_log2;
          if (partial && tw * 16 + n * 8 + (lane & 3) * 2 + e >= valid) x = -INFINITY;
          mx = fmaxf(mx, x);
        }
      }
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float m_new = fmaxf(m_run[h], mx);
      const float base = m_new == -INFINITY ? 0.f : m_new;
      alpha[h] = fast_exp2(m_run[h] - base);
      float sum = 0.f;
#pragma unroll
      for (int n = 0; n < 2; ++n) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float& x = sc[n][h * 2 + e];
          x = fast_exp2(x - base);
          sum += x;
        }
      }
      l_run[h] = l_run[h] * alpha[h] + sum;
      m_run[h] = m_new;
    }
    // Rescale O only when some row's max moved (rare after the first stages).
    if (__any_sync(0xffffffffu, alpha[0] != 1.f || alpha[1] != 1.f)) {
#pragma unroll
      for (int i = 0; i < DNW; ++i) {
        o[i][0] *= alpha[0]; o[i][1] *= alpha[0];
        o[i][2] *= alpha[1]; o[i][3] *= alpha[1];
      }
    }

    // O += P V for this warp's head_dim columns.
    uint32_t pa[4];
    pa[0] = pack2<T>(sc[0][0], sc[0][1]);
    pa[1] = pack2<T>(sc[0][2], sc[0][3]);
    pa[2] = pack2<T>(sc[1][0], sc[1][1]);
    pa[3] = pack2<T>(sc[1][2], sc[1][3]);
    const uint32_t vbase = sV0 + buf * C::kStageBytes;
#pragma unroll
    for (int dp = 0; dp < DNW / 2; ++dp) {
      uint32_t b[4];
      if constexpr (VLLM) {
        const int d = cv0 * 8 + dp * 16 + (mi >> 1) * 8 + li, g = tw * 2 + (mi & 1);
        ldsm_x4(b, vbase + (g * D + d) * 16);
      } else {
        const int c = cv0 + 2 * dp + (mi >> 1);
        ldsm_x4_trans(b, vbase + (c * ST + (tP ^ (c & 7))) * 16);
      }
      mma_16816<T>(o[2 * dp], pa, b[0], b[1]);
      mma_16816<T>(o[2 * dp + 1], pa, b[2], b[3]);
    }
  }
  cp_async_wait<0>();
  __syncthreads();  // the stage buffers become the combine area

  // ---- combine the WT token groups, normalise, write ----
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    l_run[h] += __shfl_xor_sync(0xffffffffu, l_run[h], 1);
    l_run[h] += __shfl_xor_sync(0xffffffffu, l_run[h], 2);
  }
  float* sO = reinterpret_cast<float*>(smem_raw);  // [WT][16][D]
  {
    float* mine = sO + tw * kRows * D + cv0 * 8;
#pragma unroll
    for (int i = 0; i < DNW; ++i) {
      const int col = i * 8 + (lane & 3) * 2;
      *reinterpret_cast<float2*>(mine + r0 * D + col) = make_float2(o[i][0], o[i][1]);
      *reinterpret_cast<float2*>(mine + (r0 + 8) * D + col) = make_float2(o[i][2], o[i][3]);
    }
    if (dh == 0 && (lane & 3) == 0) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        sML[(tw * kRows + r0 + h * 8) * 2] = m_run[h];
        sML[(tw * kRows + r0 + h * 8) * 2 + 1] = l_run[h];
      }
    }
  }
  __syncthreads();

  for (int it = tid; it < group * (D / 4); it += kThreads) {
    const int r = it / (D / 4), d = (it % (D / 4)) * 4;
    float M = -INFINITY;
#pragma unroll
    for (int w = 0; w < C::WT; ++w) M = fmaxf(M, sML[(w * kRows + r) * 2]);
    const float base = M == -INFINITY ? 0.f : M;
    float L = 0.f;
    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
    for (int w = 0; w < C::WT; ++w) {
      const float sc = fast_exp2(sML[(w * kRows + r) * 2] - base);
      L += sML[(w * kRows + r) * 2 + 1] * sc;
      const float4 x = *reinterpret_cast<const float4*>(sO + (w * kRows + r) * D + d);
      acc.x += x.x * sc; acc.y += x.y * sc; acc.z += x.z * sc; acc.w += x.w * sc;
    }
    const float inv = L > 0.f ? 1.f / L : 0.f;
    acc.x *= inv; acc.y *= inv; acc.z *= inv; acc.w *= inv;
    const int head = kvh * group + r;
    if (p.num_splits == 1) {
      T* dst = static_cast<T*>(p.out) + static_cast<int64_t>(row) * p.out_row_stride + head * p.out_head_stride + d;
      Packed<T, 4> v;
      v.v[0] = from_float<T>(acc.x); v.v[1] = from_float<T>(acc.y);
      v.v[2] = from_float<T>(acc.z); v.v[3] = from_float<T>(acc.w);
      store_packed<T, 4>(dst, v);
    } else {
      const int64_t prow = (static_cast<int64_t>(row) * p.num_heads + head) * p.num_splits + split;
      *reinterpret_cast<float4*>(p.part_out + prow * D + d) = acc;
      if (d == 0) p.part_lse[prow] = L > 0.f ? base + __log2f(L) : -INFINITY;
    }
  }
}

// ---- split-K merge (launched with programmatic dependent launch) ----------

// One CTA per (query row, head, head_dim slice of D / gridDim.z columns): out = sum_j w_j O_j /
// sum_j w_j, w_j = exp2(lse_j - max lse), over the splits that hold keys of the row (same
// partial layout as merge_splits_kernel). Few rows (batch 1) use 32-column slices, so 4x more
// CTAs share the partial reads. A thread's first kBatch partial loads are issued before the
// lse reduction: the merge is ~2 memory round trips for up to kBatch x (threads / (slice / 4))
// splits.
template <typename T, int D>
__global__ void __launch_bounds__(kThreads) merge_kernel(const AttnParams p) {
  constexpr int kBatch = 8;
  __shared__ float s_w[kMaxSplits];
  __shared__ float s_red[2][kWarps];
  __shared__ float4 s_acc[kThreads];
  const int row = blockIdx.x, head = blockIdx.y, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int slice = D / gridDim.z, col0 = blockIdx.z * slice;
  const int Q = slice / 4;              // float4 per partial row slice
  const int groups = kThreads / Q;      // splits walked in parallel (5 at D = 96 unsliced)
  pdl_wait();  // the attention grid has finished and its partials are visible

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
  const int n = min((end + p.tokens_per_split - 1) / p.tokens_per_split, p.num_splits);
  const int64_t prow = (static_cast<int64_t>(row) * p.num_heads + head) * p.num_splits;
  static_assert(kMaxSplits == 2 * kThreads, "two lse per thread");

  const float l0 = tid < n ? p.part_lse[prow + tid] : -INFINITY;
  const float l1 = tid + kThreads < n ? p.part_lse[prow + tid + kThreads] : -INFINITY;
  const int q = tid % Q, grp = tid / Q;
  const bool active = grp < groups;
  const float* src = p.part_out + prow * D + col0 + q * 4;
  float4 x[kBatch];
#pragma unroll
  for (int b = 0; b < kBatch; ++b) {
    const int j = grp + b * groups;
    x[b] = active && j < n ? *reinterpret_cast<const float4*>(src + static_cast<int64_t>(j) * D)
                           : make_float4(0.f, 0.f, 0.f, 0.f);
  }

  float mx = fmaxf(l0, l1);
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
  if (lane == 0) s_red[0][warp] = mx;
  __syncthreads();
  mx = s_red[0][0];
#pragma unroll
  for (int w = 1; w < kWarps; ++w) mx = fmaxf(mx, s_red[0][w]);
  const float base = mx == -INFINITY ? 0.f : mx;
  const float w0 = fast_exp2(l0 - base), w1 = fast_exp2(l1 - base);  // 0 past n (lse = -inf)
  s_w[tid] = w0;
  s_w[tid + kThreads] = w1;
  float ws = w0 + w1;
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) ws += __shfl_xor_sync(0xffffffffu, ws, off);
  if (lane == 0) s_red[1][warp] = ws;
  __syncthreads();
  float wsum = 0.f;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) wsum += s_red[1][w];

  float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
  for (int j0 = 0;; j0 += kBatch * groups) {
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
      const int j = j0 + grp + b * groups;
      const float w = active && j < n ? s_w[j] : 0.f;
      acc.x += w * x[b].x; acc.y += w * x[b].y; acc.z += w * x[b].z; acc.w += w * x[b].w;
    }
    if (j0 + kBatch * groups >= n) break;
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
      const int j = j0 + kBatch * groups + grp + b * groups;
      x[b] = active && j < n ? *reinterpret_cast<const float4*>(src + static_cast<int64_t>(j) * D)
                             : make_float4(0.f, 0.f, 0.f, 0.f);
    }
  }
  s_acc[tid] = acc;
  __syncthreads();
  if (tid < Q) {
    for (int g = 1; g < groups; ++g) {
      const float4 y = s_acc[g * Q + tid];
      acc.x += y.x; acc.y += y.y; acc.z += y.z; acc.w += y.w;
    }
    const float inv = wsum > 0.f ? 1.f / wsum : 0.f;
    Packed<T, 4> v;
    v.v[0] = from_float<T>(acc.x * inv); v.v[1] = from_float<T>(acc.y * inv);
    v.v[2] = from_float<T>(acc.z * inv); v.v[3] = from_float<T>(acc.w * inv);
    store_packed<T, 4>(static_cast<T*>(p.out) + row * p.out_row_stride + head * p.out_head_stride + col0 + tid * 4,
                       v);
  }
}

}  // namespace ferrum::attn::decode
