// Torch-free interface of the Hopper (sm_90a) grouped GEMM of the MoE prefill tier.
//
// One GEMM per expert e over the rows [offsets[e], offsets[e + 1]) of an expert-sorted matrix:
//   d[r, :] = a[r, :] @ w[e]^T      a [rows, k] row-major, w [E, n, k] (k contiguous), d [rows, n]
// Group count E is host-known; every size, pointer and stride of a group is written on the device
// from `offsets` by a small kernel, so the launch shape never depends on device values (graph-safe).
// The GEMM is CUTLASS 3.x KernelPtrArrayTmaWarpSpecializedCooperative (TMA, wgmma, persistent CTAs);
// see grouped_gemm_sm90_impl.cuh. Instantiated for bf16 and fp16, with the plain and the SiLU·mul
// epilogue, one .cu file each.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

namespace ferrum::moe {

struct GroupedGemmSm90Args {
  const void* a;       // [rows, k], row r of expert e at offsets[e] <= r < offsets[e + 1]
  const void* w;       // [num_experts, n, k]
  void* d;             // [rows, n], or [rows, n / 2] with silu_mul
  const int* offsets;  // device, [num_experts + 1], non-decreasing
  int num_experts;
  int n;
  int k;
  int device;
  int sm_count;
  // The gate_up GEMM over w13 with gate and up rows interleaved by 8 (interleave_gate_up):
  // d[r, j] = silu(a[r] . gate row j) * (a[r] . up row j), computed in the epilogue.
  bool silu_mul;
};

// Whether the extension was built with sm_90a device code (setup.py defines FERRUM_SM90A_BUILT
// when TORCH_CUDA_ARCH_LIST names 9.0a). Without it the functions below only report an error.
bool grouped_gemm_sm90_built();

// Device scratch (argument arrays + CUTLASS workspace) that grouped_gemm_sm90 needs; bytes.
size_t grouped_gemm_sm90_scratch_bytes(const GroupedGemmSm90Args& args, bool dtype_bf16);

// Enqueues the argument kernel and the grouped GEMM on `stream`. Returns nullptr on success, else a
// static message naming what failed (the caller turns it into an exception).
const char* grouped_gemm_sm90(const GroupedGemmSm90Args& args, bool dtype_bf16, void* scratch,
                              size_t scratch_bytes, cudaStream_t stream);

// Per-dtype and per-epilogue entry points (one translation unit each; *_silu_* need silu_mul).
size_t grouped_gemm_sm90_scratch_bytes_bf16(const GroupedGemmSm90Args& args);
size_t grouped_gemm_sm90_scratch_bytes_fp16(const GroupedGemmSm90Args& args);
size_t grouped_gemm_sm90_scratch_bytes_silu_bf16(const GroupedGemmSm90Args& args);
size_t grouped_gemm_sm90_scratch_bytes_silu_fp16(const GroupedGemmSm90Args& args);
const char* grouped_gemm_sm90_bf16(const GroupedGemmSm90Args& args, void* scratch, size_t scratch_bytes,
                                   cudaStream_t stream);
const char* grouped_gemm_sm90_fp16(const GroupedGemmSm90Args& args, void* scratch, size_t scratch_bytes,
                                   cudaStream_t stream);
const char* grouped_gemm_sm90_silu_bf16(const GroupedGemmSm90Args& args, void* scratch, size_t scratch_bytes,
                                        cudaStream_t stream);
const char* grouped_gemm_sm90_silu_fp16(const GroupedGemmSm90Args& args, void* scratch, size_t scratch_bytes,
                                        cudaStream_t stream);

}  // namespace ferrum::moe
