// Shared pieces of the MoE kernels: the argument block of the grouped GEMMs,
// tier constants, and the PTX wrappers (cp.async, ldmatrix, mma.sync m16n8k16).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cstdint>
#include <type_traits>

#include "common/pdl.cuh"

namespace ferrum::moe {

// Rows per tile of the weight-streaming GEMV tier (its moe_align block_m).
constexpr int kGemvBlockM = 4;
// block_m of the small-M tensor-core tier.
constexpr int kSmallBlockM = 16;

// One grouped GEMM over the tiles that moe_align produced:
//   out[p, n] = sum_k a[row(p), k] * w[expert(tile), n, k]      (down)
//   out[p, n] = silu(g) * u with g, u the rows gate_row(n) and up_row(n) of w (gate_up)
// row(p) = p / a_row_div: the token of pair p (gate_up, a = hidden) or p itself (down, a = h).
struct GemmArgs {
  const void* a;            // activations, rows of k elements, a_stride apart
  const void* w;            // weights [E, n_w, k] (n_w = 2 * n_out for gate_up, n_out for down)
  void* out;                // [num_pairs, n_out], row p = pair p
  const int* sorted_ids;    // [num_tiles * block_m]: pair ids, num_pairs = padding
  const int* block_expert;  // [num_tiles]: expert of each tile, -1 = unused
  const int* num_padded;    // [1]: rows in use (a multiple of block_m)
  int64_t a_stride;         // elements between rows of a
  int num_tiles;            // upper bound of tiles (grid size)
  int n_out;
  int k;
  int a_row_div;
  int num_pairs;
  // Router ids [num_pairs] and E, read only by the GEMV tier's gate_up as a prefetch hint before its
  // PDL wait (gemv.cuh); may be null.
  const int* topk_ids;
  int num_experts;
  bool gate_up_interleaved;  // w13's gate and up rows interleaved by 8 (gate_row / up_row)
};

// The GEMV tier's down GEMM with the combine folded in (gemv_down_combine.cuh): out[t] = sum over
// the token's valid routes j of weights[t, j] * (h[t * k + j] @ w2[ids[t, j]]^T), in j order.
struct DownCombineArgs {
  const void* h;         // [T * k, inter]: row p = pair p (gate_up's output)
  const void* w2;        // [E, hidden, inter]
  void* out;             // [T, hidden]
  const float* weights;  // [T, k]
  const int* ids;        // [T, k]
  int num_tokens, top_k, num_experts, hidden, inter;
};

// Rows of w13[e] ([2 * n_out, k]) holding the gate and the up weights of output column n: Hugging Face
// order (gate rows 0 .. n_out - 1, then the up rows) or interleaved by 8 (ops.interleave_gate_up:
// gate 8g .. 8g+7, up 8g .. 8g+7, gate 8g+8 .. 8g+15, ...; what the Hopper tier's fused epilogue needs).
__host__ __device__ __forceinline__ int gate_row(int n, bool interleaved) {
  return interleaved ? (n >> 3) * 16 + (n & 7) : n;
}
__host__ __device__ __forceinline__ int up_row(int n, int n_out, bool interleaved) {
  return interleaved ? gate_row(n, true) + 8 : n_out + n;
}

__device__ __forceinline__ float silu_f(float x) { return x / (1.f + expf(-x)); }

// Fire-and-forget prefetch of the 128-byte line holding p into L2 (normal priority: it outlives the
// evict-first lines of ld.global.cs streams).
__device__ __forceinline__ void prefetch_l2(const void* p) { asm volatile("prefetch.global.L2 [%0];" ::"l"(p)); }

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte global -> shared copy; zero-fills the destination when !pred.
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool pred) {
  const int src_bytes = pred ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(smem)), "l"(gmem),
               "r"(src_bytes));
}
// cp_async16 that also has the L2 fetch the whole aligned 256-byte segment around gmem. A weight row
// read in 128-byte k-steps (BK = 64) then leaves DRAM two steps at a time and the next step's piece
// is an L2 hit; DRAM serves 256 contiguous bytes where it served 128 from rows that many CTAs
// stream at once (H100: 3-4% per MoE layer at T = 64..256, docs/moe.md).
__device__ __forceinline__ void cp_async16_l2_256(void* smem, const void* gmem, bool pred) {
  const int src_bytes = pred ? 16 : 0;
  asm volatile("cp.async.cg.shared.global.L2::256B [%0], [%1], 16, %2;\n" ::"r"(smem_u32(smem)), "l"(gmem),
               "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* smem) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(smem)));
}

// d += a * b for one m16n8k16 tile, fp32 accumulators.
template <typename T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// Host-side launchers, one per .cu file (dtype_bf16 selects __nv_bfloat16, else __half).
void launch_gemv(const GemmArgs& args, bool gate_up, bool dtype_bf16, cudaStream_t stream);
// The GEMV tier's down GEMM with the combine folded in (gemv_down_combine.cuh); false (nothing
// launched) where inter is not supported (inter % 8 != 0 or inter > 1536).
bool launch_gemv_down_combine(const DownCombineArgs& args, bool dtype_bf16, cudaStream_t stream);
void launch_mma_small(const GemmArgs& args, bool gate_up, bool dtype_bf16, cudaStream_t stream);
void launch_mma_prefill64(const GemmArgs& args, bool gate_up, bool dtype_bf16, cudaStream_t stream);
void launch_mma_prefill96(const GemmArgs& args, bool gate_up, bool dtype_bf16, cudaStream_t stream);
void launch_mma_prefill128(const GemmArgs& args, bool gate_up, bool dtype_bf16, cudaStream_t stream);

}  // namespace ferrum::moe
