// The tile list of the tiled varlen kernel, built on the device from
// cu_seqlens_q. A plain (non-template) kernel: include from one .cu file only.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace ferrum::attn {

// ---- tile list for the tiled-Q4 varlen kernel ------------------------------

// One CTA: tiles of `qpc` consecutive query rows per sequence, from cu_seqlens_q
// on the device (valid under CUDA-graph replay), padded with empty entries
// up to max_tiles. Entry: (seq, first packed row, rows, q_len - first q index).
// Sequences with q_len > max_q get no tiles (they go to the prefill kernel).
__global__ void build_tiles_kernel(const int* cu_seqlens_q, int num_seqs, int qpc, int4* tiles, int max_tiles,
                                   int max_q = 0x7fffffff) {
  __shared__ int s_scan[1024 / 32];
  __shared__ int s_carry;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, nw = blockDim.x / 32;
  if (tid == 0) s_carry = 0;
  __syncthreads();
  for (int base = 0; base < num_seqs; base += blockDim.x) {
    const int s = base + tid;
    int c0 = 0, q_len = 0;
    if (s < num_seqs) {
      c0 = cu_seqlens_q[s];
      q_len = max(cu_seqlens_q[s + 1] - c0, 0);
      if (q_len > max_q) q_len = 0;
    }
    const int cnt = (q_len + qpc - 1) / qpc;
    int incl = cnt;
#pragma unroll
    for (int off = 1; off < 32; off <<= 1) {
      const int y = __shfl_up_sync(0xffffffffu, incl, off);
      if (lane >= off) incl += y;
    }
    if (lane == 31) s_scan[warp] = incl;
    __syncthreads();
    int before = s_carry;
    for (int w = 0; w < warp; ++w) before += s_scan[w];
    const int first = before + incl - cnt;
    for (int k = 0; k < cnt && first + k < max_tiles; ++k)
      tiles[first + k] = make_int4(s, c0 + k * qpc, min(qpc, q_len - k * qpc), q_len - k * qpc);
    __syncthreads();
    if (tid == 0) {
      int total = 0;
      for (int w = 0; w < nw; ++w) total += s_scan[w];
      s_carry += total;
    }
    __syncthreads();
  }
  for (int i = s_carry + tid; i < max_tiles; i += blockDim.x) tiles[i] = make_int4(0, 0, 0, 0);
}

// ---- tile list for the chunked-prefill kernel (paged_prefill.cuh) -----------

// Exclusive block scan of one value per thread (blockDim.x == 1024); returns
// the prefix and writes the block total to *total. s_warp: 32 ints of scratch.
__device__ __forceinline__ int block_exclusive_scan_1024(int v, int* s_warp, int* total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  int incl = v;
#pragma unroll
  for (int off = 1; off < 32; off <<= 1) {
    const int y = __shfl_up_sync(0xffffffffu, incl, off);
    if (lane >= off) incl += y;
  }
  __syncthreads();  // s_warp free (a previous call may still read it)
  if (lane == 31) s_warp[warp] = incl;
  __syncthreads();
  int before = 0, sum = 0;
  for (int w = 0; w < 32; ++w) {
    const int x = s_warp[w];
    if (w < warp) before += x;
    sum += x;
  }
  *total = sum;
  return before + incl - v;
}

// One CTA of 1024 threads. Tiles of `tq` consecutive query tokens for every
// sequence with q_len >= min_q, ordered by the keys visible to the tile's last
// row, largest first (counting sort over 1024 buckets of max_seq_len / 1024;
// order inside a bucket is arbitrary, which no output depends on), then empty
// entries up to max_tiles. Entry: (seq, first packed row, tokens, q_len - first
// q index). seq_start: int [num_seqs + 1] of global scratch (tile offsets).
__global__ void __launch_bounds__(1024) build_prefill_tiles_kernel(const int* cu_seqlens_q, const int* seq_lens,
                                                                   int num_seqs, int min_q, int tq, int max_seq_len,
                                                                   int* seq_start, int4* tiles, int max_tiles) {
  constexpr int kBuckets = 1024;
  __shared__ int s_hist[kBuckets];
  __shared__ int s_warp[32];
  const int tid = threadIdx.x;
  s_hist[tid] = 0;

  // tile offsets of the sequences
  int carry = 0;
  for (int base = 0; base < num_seqs; base += 1024) {
    const int s = base + tid;
    int cnt = 0;
    if (s < num_seqs) {
      const int q_len = cu_seqlens_q[s + 1] - cu_seqlens_q[s];
      cnt = q_len >= min_q ? (q_len + tq - 1) / tq : 0;
    }
    int sum;
    const int ex = block_exclusive_scan_1024(cnt, s_warp, &sum);
    if (s < num_seqs) seq_start[s] = carry + ex;
    carry += sum;
  }
  if (tid == 0) seq_start[num_seqs] = carry;
  __syncthreads();  // seq_start (global) visible to the block
  const int total = min(carry, max_tiles);
  const int64_t key_den = static_cast<int64_t>(max(max_seq_len, 1)) + 1;

  // The tile t: its entry and its bucket (0 = most visible keys).
  auto tile_of = [&](int t, int4& e) -> int {
    int lo = 0, hi = num_seqs - 1;  // the last s with seq_start[s] <= t
    while (lo < hi) {
      const int mid = (lo + hi + 1) >> 1;
      if (seq_start[mid] <= t) lo = mid; else hi = mid - 1;
    }
    const int s = lo, k = t - seq_start[s];
    const int c0 = cu_seqlens_q[s], q_len = cu_seqlens_q[s + 1] - c0, seq_len = seq_lens[s];
    const int first = k * tq, n = min(tq, q_len - first);
    e = make_int4(s, c0 + first, n, q_len - first);
    const int kv_end = min(max(seq_len - q_len + first + n, 0), max(seq_len, 0));
    const int64_t b64 = static_cast<int64_t>(kv_end) * kBuckets / key_den;
    const int b = b64 < kBuckets - 1 ? static_cast<int>(b64) : kBuckets - 1;
    return kBuckets - 1 - b;
  };

  for (int t = tid; t < total; t += 1024) {
    int4 e;
    atomicAdd(&s_hist[tile_of(t, e)], 1);
  }
  __syncthreads();
  {
    int sum;
    const int ex = block_exclusive_scan_1024(s_hist[tid], s_warp, &sum);
    s_hist[tid] = ex;  // each thread reads and writes only its own bucket here
  }
  __syncthreads();
  for (int t = tid; t < total; t += 1024) {
    int4 e;
    const int pos = atomicAdd(&s_hist[tile_of(t, e)], 1);
    if (pos < max_tiles) tiles[pos] = e;
  }
  for (int i = total + tid; i < max_tiles; i += 1024) tiles[i] = make_int4(0, 0, 0, 0);
}

}  // namespace ferrum::attn
