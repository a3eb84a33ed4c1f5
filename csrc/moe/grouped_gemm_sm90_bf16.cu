// Hopper grouped GEMM of the MoE prefill tier, bf16 (see grouped_gemm_sm90_impl.cuh).
// Device asserts inside CuTe (cute/pointer_flagged.hpp) add a call that makes ptxas serialise
// every wgmma (C7510); CUTLASS is meant to be built with NDEBUG.
#ifndef NDEBUG
#define NDEBUG
#endif
// CUTLASS 4.2 headers under -std=c++20: "implicit by-copy capture of this is deprecated" (sm100 builders).
#pragma nv_diag_suppress 2908
#include "moe/grouped_gemm_sm90_impl.cuh"

namespace ferrum::moe {
FERRUM_MOE_SM90_DEFINE(bf16, cutlass::bfloat16_t)
}  // namespace ferrum::moe
