// The tile list of the tiled varlen kernel, built on the device from
// cu_seqlens_q. A plain (non-template) kernel: include from one .cu file only.
#pragma once

#include <cuda_runtime.h>

namespace ferrum::attn {

// ---- tile list for the tiled-Q4 varlen kernel ------------------------------

// One CTA: tiles of `qpc` consecutive query rows per sequence, from cu_seqlens_q
// on the device (valid under CUDA-graph replay), padded with empty entries
// up to max_tiles. Entry: (seq, first packed row, rows, q_len - first q index).
__global__ void build_tiles_kernel(const int* cu_seqlens_q, int num_seqs, int qpc, int4* tiles, int max_tiles) {
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

}  // namespace ferrum::attn
