// Greedy argmax over logits rows: ids[b] = argmax_v logits[b, v], bit-identical to
// torch.argmax(logits, -1): ties go to the lowest index, NaN counts as the largest value
// (the first NaN wins), -0.0 == +0.0. Optionally only entries with allowed[b, v] != 0
// compete; a row with none allowed gives id -1 (value -inf).
//
// Napkin math (H100, ~3.0 TB/s streaming read): B * V * elem_size bytes read once.
//   B=1   V=151936 fp32: 608 KB -> 0.2 us of bandwidth; latency bound. One CTA per row
//                        would take ~30 us (what torch.argmax does), so the row is split
//                        over ~150 CTAs (one 16-byte load per thread), each writing a
//                        partial key; a one-warp merge kernel (launched with programmatic
//                        dependent launch so its launch overlaps) finishes the row.
//   B=256 V=151936 fp32: 156 MB -> 52 us at 3.0 TB/s. Rows cut into 16 KB chunks (37 per
//                        row), one short-lived CTA each with all its 16-byte loads in
//                        flight at once, then the same merge: many independent short
//                        streams keep DRAM busier than one long stream per row (16-bit
//                        rows, half as long, measured faster with one CTA per row).
//
// The order-preserving key. Every element maps to a 64-bit key
//     key = code(value) << 32 | ~index          (index < 2^31, as uint32)
// where code() is monotone in the float order, maps -0.0 and +0.0 to the same code and
// every NaN to 0xFFFFFFFF (above +inf). Then max(key) over a row is exactly torch's
// answer: the largest value, NaN first, and among equal values the smallest index
// (larger ~index). Real elements have code >= 0x007FFFFF, so key 0 is the identity of
// the max and means "no element" (a chunk with nothing allowed, or a fully masked row).
// Within a thread, elements are visited in increasing index order, so a strict `>` on
// the 32-bit code suffices there and the 64-bit key is built once per thread.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "common/pdl.cuh"
#include "common/types.cuh"

namespace ferrum {
namespace argmax {

constexpr int kThreads = 256;  // per CTA of the row kernel
// 16-byte loads in flight per thread: 32 elements, 128 / 64 bytes (fp32 / 16-bit types).
template <typename T>
constexpr int kLoadsInFlight = 32 / (16 / sizeof(T));

// Monotone 32-bit code of a float: NaN -> 0xFFFFFFFF, -0.0 -> code(+0.0).
__device__ __forceinline__ uint32_t order_code(float x) {
  // x + (+0.0) turns -0.0 into +0.0 and leaves everything else (NaN included) alone;
  // __fadd_rn is never contracted or folded away.
  const uint32_t u = __float_as_uint(__fadd_rn(x, 0.0f));
  const uint32_t code = u ^ (static_cast<uint32_t>(static_cast<int32_t>(u) >> 31) | 0x80000000u);
  return isnan(x) ? 0xFFFFFFFFu : code;
}

__device__ __forceinline__ uint64_t make_key(uint32_t code, int idx) {
  // idx == -1 with code 0 gives key 0 (the identity).
  return (static_cast<uint64_t>(code) << 32) | static_cast<uint32_t>(~idx);
}

__device__ __forceinline__ uint64_t warp_max_key(uint64_t key) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    const uint64_t other = __shfl_xor_sync(0xffffffffu, key, offset);
    key = other > key ? other : key;
  }
  return key;
}

// The best element a thread has seen; elements must arrive in increasing index order.
struct Best {
  uint32_t code = 0;
  int idx = -1;
  __device__ __forceinline__ void consider(uint32_t c, int i) {
    if (c > code) {
      code = c;
      idx = i;
    }
  }
  __device__ __forceinline__ uint64_t key() const { return make_key(code, idx); }
};

template <typename T, bool kMasked>
__device__ __forceinline__ void consider_one(Best& best, const T* x, const uint8_t* m, int i) {
  uint32_t c = order_code(to_float(x[i]));
  if constexpr (kMasked) c = m[i] ? c : 0u;
  best.consider(c, i);
}

// Writes the answer of one row from its merged key.
template <typename T>
__device__ __forceinline__ void write_result(uint64_t key, int64_t row, const T* x_row, int64_t* ids,
                                             T* values) {
  if (key == 0) {
    ids[row] = -1;
    if (values != nullptr) values[row] = from_float<T>(-INFINITY);
  } else {
    const int idx = static_cast<int>(~static_cast<uint32_t>(key));
    ids[row] = idx;
    if (values != nullptr) values[row] = x_row[idx];  // the input's own bits (NaN payload, -0.0)
  }
}

// Grid: num_chunks * B CTAs of kThreads, CTA b = row * num_chunks + chunk.
// Row `row` starts at logits + row * logits_stride (any alignment). Its elements before
// the first 16-byte boundary (`head`, fewer than 16 / sizeof(T)) belong to chunk 0; chunk
// c then covers [head + c * chunk_elems, head + (c + 1) * chunk_elems) (chunk_elems a
// multiple of the vector width, so every chunk's body is 16-byte aligned), the last chunk
// runs to V. Aligned bodies are read with 16-byte loads, the few leftovers one by one.
// num_chunks == 1: the CTA writes ids/values itself; else its key goes to
// partial[row * num_chunks + chunk] for argmax_merge_kernel.
template <typename T, bool kMasked>
__global__ void __launch_bounds__(kThreads, kMasked ? 2 : 4)
    argmax_rows_kernel(const T* __restrict__ logits, int64_t logits_stride,
                       const uint8_t* __restrict__ allowed, int64_t allowed_stride, int V, int chunk_elems,
                       int num_chunks, uint64_t* __restrict__ partial, int64_t* __restrict__ ids,
                       T* __restrict__ values) {
  constexpr int kVec = 16 / sizeof(T);
  constexpr int kUnroll = kLoadsInFlight<T>;
  pdl_launch_dependents();  // the merge kernel may be scheduled now (common/pdl.cuh)
  const int64_t row = blockIdx.x / num_chunks;
  const int chunk = static_cast<int>(blockIdx.x % num_chunks);
  const int tid = threadIdx.x;
  const T* x = logits + row * logits_stride;
  const uint8_t* m = kMasked ? allowed + row * allowed_stride : nullptr;

  const int misalign = static_cast<int>(reinterpret_cast<uintptr_t>(x) & 15);
  const int head = min(static_cast<int>(((16 - misalign) & 15) / sizeof(T)), V);
  const int64_t start = head + int64_t(chunk) * chunk_elems;
  const int lo = chunk == 0 ? 0 : static_cast<int>(start < V ? start : V);
  const int hi = chunk == num_chunks - 1 ? V : static_cast<int>(start + chunk_elems < V ? start + chunk_elems : V);
  const int vlo = max(lo, head);
  const int nvec = hi > vlo ? (hi - vlo) / kVec : 0;
  const int vhi = vlo + nvec * kVec;

  Best best;
  // 1. Unaligned head (chunk 0 only): indices [lo, min(hi, head)).
  for (int i = lo + tid; i < min(hi, head); i += kThreads) consider_one<T, kMasked>(best, x, m, i);

  // 2. Aligned body: 16-byte loads, kUnroll of them in flight per thread.
  const T* xv = x + vlo;
  const uint8_t* mv = kMasked ? m + vlo : nullptr;
  const bool mask_vec = kMasked && (reinterpret_cast<uintptr_t>(mv) % kVec) == 0;
  for (int v0 = tid; v0 < nvec; v0 += kThreads * kUnroll) {
    Vec16<T> buf[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int v = v0 + u * kThreads;
      if (v < nvec) buf[u] = load_vec16_stream(xv + int64_t(v) * kVec);
    }
    Packed<uint8_t, kVec> mbuf[kMasked ? kUnroll : 1];
    if constexpr (kMasked) {
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int v = v0 + u * kThreads;
        if (v < nvec) {
          if (mask_vec) {
            mbuf[u] = load_packed<uint8_t, kVec>(mv + int64_t(v) * kVec);
          } else {
#pragma unroll
            for (int j = 0; j < kVec; ++j) mbuf[u].v[j] = mv[int64_t(v) * kVec + j];
          }
        }
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int v = v0 + u * kThreads;
      if (v < nvec) {
#pragma unroll
        for (int j = 0; j < kVec; ++j) {
          uint32_t c = order_code(to_float(buf[u].v[j]));
          if constexpr (kMasked) c = mbuf[u].v[j] ? c : 0u;
          best.consider(c, vlo + v * kVec + j);
        }
      }
    }
  }

  // 3. Tail: indices [vhi, hi), fewer than kVec, only where the chunk meets the end of the row.
  for (int i = vhi + tid; i < hi; i += kThreads) consider_one<T, kMasked>(best, x, m, i);

  // Block-wide max of the keys.
  __shared__ uint64_t warp_keys[kThreads / 32];
  uint64_t key = warp_max_key(best.key());
  const int lane = tid % 32, warp = tid / 32;
  if (lane == 0) warp_keys[warp] = key;
  __syncthreads();
  if (warp == 0) {
    key = lane < kThreads / 32 ? warp_keys[lane] : 0;
    key = warp_max_key(key);
    if (lane == 0) {
      if (num_chunks == 1) {
        write_result(key, row, x, ids, values);
      } else {
        partial[blockIdx.x] = key;
      }
    }
  }
}

// One warp per row: max over the row's num_chunks partial keys, then the answer.
template <typename T>
__global__ void __launch_bounds__(256)
    argmax_merge_kernel(const uint64_t* partial, int num_chunks, int64_t rows, const T* __restrict__ logits,
                        int64_t logits_stride, int64_t* __restrict__ ids, T* __restrict__ values) {
  pdl_wait();  // the row kernel's partial keys
  const int64_t row = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;
  const uint64_t* p = partial + row * num_chunks;
  uint64_t key = 0;
  for (int c = lane; c < num_chunks; c += 32) {
    // L2 load: written by the previous kernel, never cached in this SM's L1.
    const uint64_t k = __ldcg(reinterpret_cast<const unsigned long long*>(p + c));
    key = k > key ? k : key;
  }
  key = warp_max_key(key);
  if (lane == 0) write_result(key, row, logits + row * logits_stride, ids, values);
}

}  // namespace argmax
}  // namespace ferrum
